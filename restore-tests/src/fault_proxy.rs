//! A loopback HTTP/1.1 proxy in front of an S3 server that injects faults: 5xx answers, connection
//! resets, truncated and flipped bodies, and short listing pages.
//!
//! Requests pass through byte for byte (their SigV4 signatures stay valid); only responses are
//! altered. Faults come from explicit rules, from a seeded random plan, or both, and every
//! injected fault is counted so a test can prove that faults really happened.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// What to do to a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// Answer 503 Slow Down without asking the server.
    ServiceUnavailable,
    /// Close the connection without answering (after the server saw the request).
    Reset,
    /// Send the headers and half the body, then close.
    TruncateBody,
    /// Flip one bit in the middle of the body.
    FlipBody,
    /// Cut a ListObjectsV2 page to a few keys and continue from there (a legal, short page).
    ShortListing,
}

/// Which requests a rule applies to.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    /// HTTP method, e.g. "GET".
    pub method: Option<&'static str>,
    /// A substring of the request target (path and query).
    pub target_contains: Option<String>,
}

impl Matcher {
    /// Requests with `method` whose target contains `part`.
    pub fn on(method: &'static str, part: &str) -> Self {
        Self { method: Some(method), target_contains: Some(part.to_string()) }
    }

    fn matches(&self, method: &str, target: &str) -> bool {
        self.method.is_none_or(|m| m == method) && self.target_contains.as_deref().is_none_or(|s| target.contains(s))
    }
}

#[derive(Debug)]
struct Rule {
    matcher: Matcher,
    fault: Fault,
    times: usize,
}

#[derive(Debug)]
struct RandomPlan {
    rng: rand::rngs::StdRng,
    probability: f64,
    faults: Vec<Fault>,
}

#[derive(Debug, Default)]
struct State {
    rules: Vec<Rule>,
    random: Option<RandomPlan>,
    injected: BTreeMap<Fault, usize>,
    requests: usize,
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    state: Arc<Mutex<State>>,
    _runtime: tokio::runtime::Runtime,
}

impl FaultProxy {
    /// Listen on a free loopback port and forward to `upstream`.
    pub fn start(upstream: SocketAddr) -> Self {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("proxy runtime");
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        runtime.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let st = st.clone();
                tokio::spawn(async move {
                    // Injected faults end connections on purpose; anything else is worth seeing.
                    if let Err(e) = serve(client, upstream, st).await
                        && e.kind() != std::io::ErrorKind::UnexpectedEof
                    {
                        eprintln!("fault proxy: connection ended: {e}");
                    }
                });
            }
        });
        Self { endpoint: format!("http://{addr}"), state, _runtime: runtime }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Apply `fault` to the next `times` matching responses.
    pub fn add_rule(&self, matcher: Matcher, fault: Fault, times: usize) {
        self.lock().rules.push(Rule { matcher, fault, times });
    }

    /// Apply a random fault from `faults` to each response with `probability`, seeded.
    pub fn set_random(&self, seed: u64, probability: f64, faults: &[Fault]) {
        self.lock().random =
            Some(RandomPlan { rng: rand::rngs::StdRng::seed_from_u64(seed), probability, faults: faults.to_vec() });
    }

    /// Stop random faults (rules stay).
    pub fn clear_random(&self) {
        self.lock().random = None;
    }

    /// How many times each fault was injected.
    pub fn injected(&self) -> BTreeMap<Fault, usize> {
        self.lock().injected.clone()
    }

    /// Total faults injected.
    pub fn total_injected(&self) -> usize {
        self.lock().injected.values().sum()
    }

    /// Requests seen.
    pub fn requests(&self) -> usize {
        self.lock().requests
    }
}

fn choose(state: &Mutex<State>, method: &str, target: &str) -> Option<Fault> {
    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
    s.requests += 1;
    let listing = method == "GET" && target.contains("list-type=2");
    let applicable = |f: Fault| match f {
        Fault::ShortListing => listing,
        Fault::TruncateBody | Fault::FlipBody => method == "GET",
        _ => true,
    };
    let mut chosen = None;
    if let Some(r) =
        s.rules.iter_mut().find(|r| r.times > 0 && applicable(r.fault) && r.matcher.matches(method, target))
    {
        r.times -= 1;
        chosen = Some(r.fault);
    } else if let Some(plan) = s.random.as_mut() {
        let candidates: Vec<Fault> = plan.faults.iter().copied().filter(|f| applicable(*f)).collect();
        if !candidates.is_empty() && plan.rng.gen_bool(plan.probability) {
            chosen = Some(candidates[plan.rng.gen_range(0..candidates.len())]);
        }
    }
    if let Some(f) = chosen {
        *s.injected.entry(f).or_default() += 1;
    }
    chosen
}

struct Head {
    first: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn encode(&self, body_len: Option<usize>) -> Vec<u8> {
        let mut out = format!("{}\r\n", self.first);
        for (k, v) in &self.headers {
            let framing = k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding");
            if body_len.is_some() && framing {
                continue;
            }
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(n) = body_len {
            out.push_str(&format!("content-length: {n}\r\n"));
        }
        out.push_str("\r\n");
        out.into_bytes()
    }
}

async fn read_head<R: AsyncBufReadExt + Unpin>(r: &mut R) -> std::io::Result<Option<Head>> {
    let mut first = String::new();
    if r.read_line(&mut first).await? == 0 {
        return Ok(None);
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Ok(Some(Head { first: first.trim_end().to_string(), headers }))
}

async fn read_body<R: AsyncBufReadExt + Unpin>(r: &mut R, head: &Head) -> std::io::Result<Vec<u8>> {
    if head.get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut body = Vec::new();
        loop {
            let mut size = String::new();
            r.read_line(&mut size).await?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).await?;
            if n == 0 {
                return Ok(body);
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    let n: usize = head.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0; n];
    r.read_exact(&mut body).await?;
    Ok(body)
}

async fn serve(client: TcpStream, upstream: SocketAddr, state: Arc<Mutex<State>>) -> std::io::Result<()> {
    let (cr, mut cw) = client.into_split();
    let mut cr = BufReader::new(cr);
    let server = TcpStream::connect(upstream).await?;
    let (sr, mut sw) = server.into_split();
    let mut sr = BufReader::new(sr);
    loop {
        let Some(req) = read_head(&mut cr).await? else { return Ok(()) };
        let body = read_body(&mut cr, &req).await?;
        let mut parts = req.first.split(' ');
        let method = parts.next().unwrap_or_default().to_string();
        let target = parts.next().unwrap_or_default().to_string();
        let fault = choose(&state, &method, &target);
        if fault == Some(Fault::ServiceUnavailable) {
            let msg = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>injected by the fault proxy</Message></Error>";
            // A HEAD answer carries no body, whatever its headers say.
            let body: &[u8] = if method == "HEAD" { b"" } else { msg };
            let head = format!(
                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/xml\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            cw.write_all(head.as_bytes()).await?;
            cw.write_all(body).await?;
            continue;
        }
        sw.write_all(&req.encode(None)).await?;
        sw.write_all(&body).await?;
        let resp = read_head(&mut sr).await?.ok_or(std::io::ErrorKind::UnexpectedEof)?;
        let status: u16 = resp.first.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let bodyless = method == "HEAD" || status == 204 || status == 304 || (100..200).contains(&status);
        let mut rbody = if bodyless { Vec::new() } else { read_body(&mut sr, &resp).await? };
        let ok = (200..300).contains(&status);
        match fault {
            Some(Fault::Reset) => return Ok(()),
            Some(Fault::TruncateBody) if ok && rbody.len() > 1 => {
                cw.write_all(&resp.encode(Some(rbody.len()))).await?;
                cw.write_all(&rbody[..rbody.len() / 2]).await?;
                return Ok(());
            }
            Some(Fault::FlipBody) if ok && !rbody.is_empty() => {
                let mid = rbody.len() / 2;
                rbody[mid] ^= 0x10;
            }
            Some(Fault::ShortListing) if ok => rbody = shorten_listing(&rbody),
            _ => {}
        }
        if bodyless {
            cw.write_all(&resp.encode(None)).await?;
        } else {
            cw.write_all(&resp.encode(Some(rbody.len()))).await?;
            cw.write_all(&rbody).await?;
        }
    }
}

/// Keep the first three `<Contents>` of a ListObjectsV2 page and say the listing goes on after the
/// last one kept (Garage's continuation token is `]` and the base64 of that key).
fn shorten_listing(body: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(body).into_owned();
    let starts: Vec<usize> = text.match_indices("<Contents>").map(|(i, _)| i).collect();
    if starts.len() <= 3 {
        return body.to_vec();
    }
    let cut = starts[3];
    let kept = &text[..cut];
    let last_key =
        kept.rfind("<Key>").and_then(|i| kept[i + 5..].split("</Key>").next()).unwrap_or_default().to_string();
    let tail = &text[cut..];
    let after_contents = tail.rfind("</Contents>").map(|i| i + "</Contents>".len()).unwrap_or(0);
    let mut rest = tail[after_contents..].to_string();
    let token = format!("]{}", base64::engine::general_purpose::STANDARD.encode(last_key.as_bytes()));
    rest = replace_element(&rest, "NextContinuationToken", &token);
    let mut head = kept.to_string();
    head = replace_element(&head, "IsTruncated", "true");
    head = replace_element(&head, "KeyCount", "3");
    if !rest.contains("<NextContinuationToken>") && !head.contains("<NextContinuationToken>") {
        rest = rest.replacen(
            "</ListBucketResult>",
            &format!("<NextContinuationToken>{token}</NextContinuationToken></ListBucketResult>"),
            1,
        );
    }
    head = replace_element(&head, "NextContinuationToken", &token);
    (head + &rest).into_bytes()
}

fn replace_element(xml: &str, name: &str, value: &str) -> String {
    let (open, close) = (format!("<{name}>"), format!("</{name}>"));
    match (xml.find(&open), xml.find(&close)) {
        (Some(a), Some(b)) if b > a => format!("{}{open}{value}{}", &xml[..a], &xml[b..]),
        _ => xml.to_string(),
    }
}
