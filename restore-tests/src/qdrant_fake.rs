//! A fake of Qdrant's documented HTTP API, for tests only: no Qdrant server runs on this machine
//! (no package of it is reachable), so Tresor's Qdrant source is tested against this, and the tests
//! say so. It serves the endpoints Tresor uses, as the API reference describes them: collection
//! snapshots (create, list, download, delete, recover from upload), `points/scroll`,
//! `points/query` and collection delete, with the `api-key` header when a key is set. Its snapshot
//! files are its own JSON, not Qdrant's tar format; Tresor treats them as opaque bytes either way.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

type Points = Vec<(u64, Vec<f32>)>;

#[derive(Default)]
struct State {
    collections: BTreeMap<String, Points>,
    snapshots: BTreeMap<(String, String), Vec<u8>>,
    counter: u64,
}

/// A running fake on loopback.
pub struct FakeQdrant {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    state: Arc<Mutex<State>>,
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

impl FakeQdrant {
    /// Start serving; `api_key` makes every request without it fail with 401.
    pub fn start(api_key: Option<&str>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let state = Arc::new(Mutex::new(State::default()));
        let (st, key) = (state.clone(), api_key.map(str::to_string));
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (st, key) = (st.clone(), key.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &st, key.as_deref());
                });
            }
        });
        Self { url, state }
    }

    /// Create or replace a collection.
    pub fn put_collection(&self, name: &str, points: Points) {
        self.state.lock().unwrap().collections.insert(name.into(), points);
    }

    /// A collection's points.
    pub fn points(&self, name: &str) -> Option<Points> {
        self.state.lock().unwrap().collections.get(name).cloned()
    }

    /// Collection names.
    pub fn collections(&self) -> Vec<String> {
        self.state.lock().unwrap().collections.keys().cloned().collect()
    }

    /// Snapshots kept on the "server" for a collection.
    pub fn snapshots(&self, name: &str) -> Vec<String> {
        self.state.lock().unwrap().snapshots.keys().filter(|(c, _)| c == name).map(|(_, s)| s.clone()).collect()
    }
}

struct Request {
    method: String,
    path: String,
    query: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

fn read_request(conn: &mut BufReader<TcpStream>) -> std::io::Result<Option<Request>> {
    let mut line = String::new();
    if conn.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        conn.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers.get("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body)?;
    let (path, query) = target.split_once('?').map_or((target.clone(), String::new()), |(p, q)| (p.into(), q.into()));
    Ok(Some(Request { method, path, query, headers, body }))
}

fn respond(conn: &mut TcpStream, status: u16, content_type: &str, body: &[u8]) -> std::io::Result<()> {
    write!(conn, "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n", body.len())?;
    conn.write_all(body)
}

fn ok(result: Value) -> (u16, Vec<u8>) {
    (200, json!({"result": result, "status": "ok", "time": 0.001}).to_string().into_bytes())
}

fn err(status: u16, why: &str) -> (u16, Vec<u8>) {
    (status, json!({"status": {"error": why}, "time": 0.0}).to_string().into_bytes())
}

fn serve(stream: TcpStream, st: &Mutex<State>, key: Option<&str>) -> std::io::Result<()> {
    let mut write = stream.try_clone()?;
    let mut read = BufReader::new(stream);
    while let Some(req) = read_request(&mut read)? {
        if let Some(k) = key
            && req.headers.get("api-key").map(String::as_str) != Some(k)
        {
            let (s, b) = err(401, "Must provide an API key or an Authorization bearer token");
            respond(&mut write, s, "application/json", &b)?;
            continue;
        }
        let segs: Vec<&str> = req.path.trim_matches('/').split('/').collect();
        if let (Some(&"snapshots"), 4, "GET") = (segs.get(2), segs.len(), req.method.as_str()) {
            let found = st.lock().unwrap().snapshots.get(&(segs[1].to_string(), segs[3].to_string())).cloned();
            match found {
                Some(bytes) => respond(&mut write, 200, "application/octet-stream", &bytes)?,
                None => {
                    let (s, b) = err(404, "Snapshot not found");
                    respond(&mut write, s, "application/json", &b)?
                }
            }
            continue;
        }
        let (status, body) = route(&req, &segs, st);
        respond(&mut write, status, "application/json", &body)?;
    }
    Ok(())
}

fn route(req: &Request, segs: &[&str], st: &Mutex<State>) -> (u16, Vec<u8>) {
    if segs.first() != Some(&"collections") || segs.len() < 2 {
        return err(404, "not found");
    }
    let name = segs[1].to_string();
    let mut s = st.lock().unwrap();
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    match (req.method.as_str(), &segs[2..]) {
        ("DELETE", []) => ok(json!(s.collections.remove(&name).is_some())),
        ("POST", ["snapshots"]) => {
            let Some(points) = s.collections.get(&name).cloned() else { return err(404, "Collection not found") };
            s.counter += 1;
            let snap = format!("{name}-{}.snapshot", s.counter);
            let bytes =
                json!({"points": points.iter().map(|(i, v)| json!({"id": i, "vector": v})).collect::<Vec<_>>()})
                    .to_string()
                    .into_bytes();
            let (size, checksum) = (bytes.len(), sha256_hex(&bytes));
            s.snapshots.insert((name, snap.clone()), bytes);
            ok(json!({"name": snap, "creation_time": "2026-11-29T00:00:00", "size": size, "checksum": checksum}))
        }
        ("GET", ["snapshots"]) => ok(json!(
            s.snapshots.keys().filter(|(c, _)| *c == name).map(|(_, n)| json!({"name": n})).collect::<Vec<_>>()
        )),
        ("DELETE", ["snapshots", snap]) => ok(json!(s.snapshots.remove(&(name, snap.to_string())).is_some())),
        ("POST", ["snapshots", "upload"]) => {
            let Some(file) = multipart_file(req) else { return err(400, "no snapshot file in the form") };
            if let Some(want) = req.query.split('&').find_map(|kv| kv.strip_prefix("checksum="))
                && want != sha256_hex(&file)
            {
                return err(400, "Snapshot checksum mismatch");
            }
            let Ok(v) = serde_json::from_slice::<Value>(&file) else { return err(400, "Snapshot is damaged") };
            let points = v["points"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|p| {
                            let vec = p["vector"]
                                .as_array()
                                .map(|x| x.iter().filter_map(Value::as_f64).map(|f| f as f32).collect());
                            (p["id"].as_u64().unwrap_or(0), vec.unwrap_or_default())
                        })
                        .collect()
                })
                .unwrap_or_default();
            s.collections.insert(name, points);
            ok(json!(true))
        }
        ("POST", ["points", "scroll"]) => {
            let Some(points) = s.collections.get(&name) else { return err(404, "Collection not found") };
            let limit = body["limit"].as_u64().unwrap_or(10) as usize;
            let with_vector = body["with_vector"].as_bool().unwrap_or(false);
            let list: Vec<Value> = points
                .iter()
                .take(limit)
                .map(|(i, v)| if with_vector { json!({"id": i, "vector": v}) } else { json!({"id": i}) })
                .collect();
            ok(json!({"points": list, "next_page_offset": null}))
        }
        ("POST", ["points", "query"]) => {
            let Some(points) = s.collections.get(&name) else { return err(404, "Collection not found") };
            let q: Vec<f32> = body["query"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_f64).map(|f| f as f32).collect())
                .unwrap_or_default();
            let limit = body["limit"].as_u64().unwrap_or(10) as usize;
            let mut scored: Vec<(u64, f32)> = points
                .iter()
                .map(|(i, v)| (*i, v.iter().zip(&q).map(|(a, b)| (a - b) * (a - b)).sum::<f32>().sqrt()))
                .collect();
            scored.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
            scored.truncate(limit);
            ok(
                json!({"points": scored.iter().map(|(i, d)| json!({"id": i, "version": 0, "score": d})).collect::<Vec<_>>()}),
            )
        }
        _ => err(404, "not found"),
    }
}

/// The `snapshot` part of a multipart/form-data body.
fn multipart_file(req: &Request) -> Option<Vec<u8>> {
    let ct = req.headers.get("content-type")?;
    let boundary = ct.split("boundary=").nth(1)?.trim_matches('"');
    let b = &req.body;
    let start = find(b, b"\r\n\r\n")? + 4;
    let end_marker = format!("\r\n--{boundary}");
    let end = start + find(&b[start..], end_marker.as_bytes())?;
    let head = String::from_utf8_lossy(&b[..start]);
    head.contains("name=\"snapshot\"").then(|| b[start..end].to_vec())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
