//! Qdrant collections through Qdrant's documented snapshot HTTP API: create a collection snapshot,
//! download it (its SHA-256 checked against the one Qdrant gives), delete the remote snapshot; the
//! golden queries are the top-k of a few stored points' vectors (`points/scroll`, `points/query`).
//! A restored snapshot is recovered through `snapshots/upload`, into a scratch collection for
//! `verify` or into the named collection by `tresor-agent qdrant-recover`.
//!
//! No Qdrant server runs on the build machine: the tests run this against a fake that serves the
//! documented endpoints, and say so.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use sha2::Digest;

use super::{Golden, PointId};

/// Why a Qdrant call failed.
#[derive(Debug, thiserror::Error)]
#[error("qdrant {what}: {why}")]
pub struct QdrantError {
    /// The call.
    pub what: String,
    /// What went wrong.
    pub why: String,
}

fn fail(what: &str, why: impl std::fmt::Display) -> QdrantError {
    QdrantError { what: what.into(), why: why.to_string() }
}

/// Requests are given at least this long: making or uploading a snapshot of a large collection
/// takes minutes.
pub const MIN_REQUEST_TIME: Duration = Duration::from_secs(600);

/// The SHA-256 of a file (Qdrant's snapshot checksum), read in 1 MiB blocks.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut hasher = sha2::Sha256::new();
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

/// A collection on a server: `http(s)://host:port/collections/NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collection {
    /// `http(s)://host:port`.
    pub base: String,
    /// The collection's name.
    pub name: String,
}

impl Collection {
    /// Parse `http(s)://host:port/collections/NAME`.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (base, name) = url
            .trim_end_matches('/')
            .rsplit_once("/collections/")
            .ok_or_else(|| format!("{url:?}: give the collection as http(s)://HOST:PORT/collections/NAME"))?;
        if !(base.starts_with("http://") || base.starts_with("https://")) || name.is_empty() || name.contains('/') {
            return Err(format!("{url:?}: give the collection as http(s)://HOST:PORT/collections/NAME"));
        }
        Ok(Self { base: base.to_string(), name: name.to_string() })
    }

    fn url(&self, rest: &str) -> String {
        format!("{}/collections/{}{rest}", self.base, self.name)
    }

    /// The same server, another collection.
    pub fn sibling(&self, name: &str) -> Self {
        Self { base: self.base.clone(), name: name.to_string() }
    }
}

/// A blocking client; `QDRANT_API_KEY` from the environment is sent as `api-key`.
pub struct Client {
    http: reqwest::blocking::Client,
    key: Option<String>,
}

impl Client {
    /// A client whose requests may take `timeout`, and at least [`MIN_REQUEST_TIME`] (snapshots of
    /// big collections take a while).
    pub fn new(timeout: Duration) -> Result<Self, QdrantError> {
        let http = reqwest::blocking::Client::builder()
            .timeout(timeout.max(MIN_REQUEST_TIME))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| fail("client", e))?;
        Ok(Self { http, key: std::env::var("QDRANT_API_KEY").ok() })
    }

    fn send(
        &self,
        what: &str,
        req: reqwest::blocking::RequestBuilder,
    ) -> Result<reqwest::blocking::Response, QdrantError> {
        let req = match &self.key {
            Some(k) => req.header("api-key", k),
            None => req,
        };
        let resp = req.send().map_err(|e| fail(what, e))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.text().unwrap_or_default();
            return Err(fail(what, format!("HTTP {status}: {}", body.chars().take(300).collect::<String>())));
        }
        Ok(resp)
    }

    fn json(&self, what: &str, req: reqwest::blocking::RequestBuilder) -> Result<Value, QdrantError> {
        let text = self.send(what, req)?.text().map_err(|e| fail(what, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| fail(what, format!("answer is not JSON: {e}")))?;
        v.get("result").cloned().ok_or_else(|| fail(what, "answer has no result"))
    }

    fn post_json(&self, what: &str, url: String, body: &Value) -> Result<Value, QdrantError> {
        self.json(what, self.http.post(url).header("content-type", "application/json").body(body.to_string()))
    }

    /// Create a snapshot, download it to `dest`, delete it on the server. Returns its SHA-256.
    pub fn snapshot_to(&self, c: &Collection, dest: &Path) -> Result<String, QdrantError> {
        let created = self.json("create snapshot", self.http.post(c.url("/snapshots?wait=true")))?;
        let name =
            created.get("name").and_then(Value::as_str).ok_or_else(|| fail("create snapshot", "no name"))?.to_string();
        let result = self.download(c, &name, dest, created.get("checksum").and_then(Value::as_str));
        // The remote copy goes whatever happened: it is a full copy of the collection on the server's disk.
        let deleted = self.json("delete snapshot", self.http.delete(c.url(&format!("/snapshots/{name}"))));
        let sha = result?;
        deleted?;
        Ok(sha)
    }

    fn download(&self, c: &Collection, name: &str, dest: &Path, checksum: Option<&str>) -> Result<String, QdrantError> {
        let what = "download snapshot";
        let mut resp = self.send(what, self.http.get(c.url(&format!("/snapshots/{name}"))))?;
        let mut file = std::fs::File::create(dest).map_err(|e| fail(what, format!("{}: {e}", dest.display())))?;
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = resp.read(&mut buf).map_err(|e| fail(what, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            std::io::Write::write_all(&mut file, &buf[..n]).map_err(|e| fail(what, e))?;
        }
        file.sync_all().map_err(|e| fail(what, e))?;
        let sha = hex::encode(hasher.finalize());
        if let Some(want) = checksum
            && want != sha
        {
            return Err(fail(what, format!("SHA-256 {sha} but Qdrant said {want}: the download is damaged")));
        }
        Ok(sha)
    }

    /// Recover `c` from a snapshot file (the collection is created or overwritten). The file is
    /// streamed into the multipart body, never held in memory.
    pub fn recover(&self, c: &Collection, snapshot: &Path, sha256: Option<&str>) -> Result<(), QdrantError> {
        let what = "recover from snapshot";
        let file = std::fs::File::open(snapshot).map_err(|e| fail(what, format!("{}: {e}", snapshot.display())))?;
        let len = file.metadata().map_err(|e| fail(what, e))?.len();
        let boundary = format!("tresor-{}", hex::encode(rand::random::<[u8; 12]>()));
        let head = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"snapshot\"; filename=\"{}.snapshot\"\r\nContent-Type: application/octet-stream\r\n\r\n",
            c.name
        );
        let tail = format!("\r\n--{boundary}--\r\n");
        let total = head.len() as u64 + len + tail.len() as u64;
        let body = std::io::Cursor::new(head.into_bytes())
            .chain(std::io::BufReader::with_capacity(1 << 20, file))
            .chain(std::io::Cursor::new(tail.into_bytes()));
        let mut url = c.url("/snapshots/upload?wait=true&priority=snapshot");
        if let Some(sha) = sha256 {
            url.push_str(&format!("&checksum={sha}"));
        }
        let req = self
            .http
            .post(url)
            .header("content-type", format!("multipart/form-data; boundary={boundary}"))
            .body(reqwest::blocking::Body::sized(body, total));
        self.json(what, req)?;
        Ok(())
    }

    /// Delete a collection.
    pub fn drop_collection(&self, c: &Collection) -> Result<(), QdrantError> {
        self.json("delete collection", self.http.delete(c.url(""))).map(|_| ())
    }

    /// The vectors of the first `n` points, as query vectors.
    pub fn sample_vectors(&self, c: &Collection, n: usize) -> Result<Vec<Vec<f32>>, QdrantError> {
        let r = self.post_json(
            "scroll",
            c.url("/points/scroll"),
            &json!({"limit": n, "with_vector": true, "with_payload": false}),
        )?;
        let points = r.get("points").and_then(Value::as_array).ok_or_else(|| fail("scroll", "no points"))?;
        points
            .iter()
            .map(|p| {
                p.get("vector")
                    .and_then(Value::as_array)
                    .map(|v| v.iter().filter_map(Value::as_f64).map(|x| x as f32).collect())
                    .filter(|v: &Vec<f32>| !v.is_empty())
                    .ok_or_else(|| {
                        fail("scroll", "a point without an unnamed vector (named vectors are not supported yet)")
                    })
            })
            .collect()
    }

    /// Top-`k` for each query vector.
    pub fn golden(&self, c: &Collection, queries: &[Vec<f32>], k: usize) -> Result<Golden, QdrantError> {
        let mut results = Vec::new();
        for q in queries {
            let r = self.post_json(
                "query",
                c.url("/points/query"),
                &json!({"query": q, "limit": k, "with_payload": false}),
            )?;
            let points = r.get("points").and_then(Value::as_array).ok_or_else(|| fail("query", "no points"))?;
            results.push(
                points
                    .iter()
                    .map(|p| {
                        let id = match p.get("id") {
                            // Qdrant ids are u64: those past i64 stay exact as text.
                            Some(Value::Number(n)) => {
                                n.as_i64().map_or_else(|| PointId::Text(n.to_string()), PointId::Num)
                            }
                            Some(Value::String(s)) => PointId::Text(s.clone()),
                            _ => PointId::Text(String::new()),
                        };
                        (id, p.get("score").and_then(Value::as_f64).unwrap_or(f64::NAN) as f32)
                    })
                    .collect(),
            );
        }
        // Writes between the snapshot and these queries can move a few results.
        Ok(Golden { k, exact: false, min_recall: 0.9, results })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collection_urls() {
        let c = Collection::parse("http://10.0.0.5:6333/collections/docs").unwrap();
        assert_eq!((c.base.as_str(), c.name.as_str()), ("http://10.0.0.5:6333", "docs"));
        assert!(Collection::parse("10.0.0.5:6333/docs").unwrap_err().contains("HOST:PORT/collections/NAME"));
    }
}
