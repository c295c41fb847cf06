//! The auditor's read-only web page: HTTPS (the controller's own certificate) on `web_listen`.
//! A person signs in with an access token (auditor role or higher; `Authorization: Bearer` works
//! too); the page lists drills with their verdicts and targets, links every report (HTML in German
//! or English, and the signed JSON), shows the audit log and whether it verifies. A listed client
//! certificate (`web_client_ca`, `web_auditors`; certs.rs) signs in without a token. Nothing here
//! changes anything: the only forms sign in and out, and every other method is refused.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::sync::{Semaphore, watch};
use tresor_report::drill::{Target, Verdict};
use tresor_report::html::Lang;
use tresor_report::portal;

use crate::audit_log::{AuditLog, OK};
use crate::core::{Controller, now_unix};
use crate::ids::Role;

pub mod certs;

/// Connections served at once; more wait in the listen backlog.
pub const WEB_CONNECTIONS: usize = 32;
/// Signed-in sessions kept (the oldest is dropped beyond this).
pub const WEB_SESSIONS: usize = 1024;
/// A session lasts this long.
const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// Audit entries per page.
const AUDIT_ROWS: usize = 200;
/// The overview verifies the whole audit chain again at least this often (in between, only what
/// was written since its last look).
const AUDIT_FULL_EVERY: Duration = Duration::from_secs(3600);
/// The sign-in form's body limit, bytes.
const FORM_LIMIT: usize = 4096;
/// The sign-in form's body must arrive within this.
const FORM_TIME: Duration = Duration::from_secs(10);
const COOKIE: &str = "tresor_session";

/// Sessions: the session id (random, in an HttpOnly cookie) maps to the token, which is checked
/// again on every request, so a withdrawn or expired token ends its sessions at once.
#[derive(Default)]
struct Sessions(Mutex<HashMap<String, (String, Instant)>>);

impl Sessions {
    fn open(&self, token: String) -> String {
        let id = hex::encode(rand::random::<[u8; 24]>());
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|_, (_, at)| at.elapsed() < SESSION_TTL);
        if m.len() >= WEB_SESSIONS
            && let Some(oldest) = m.iter().min_by_key(|(_, (_, at))| *at).map(|(k, _)| k.clone())
        {
            let _ = m.remove(&oldest);
        }
        let _ = m.insert(id.clone(), (token, Instant::now()));
        id
    }

    fn token(&self, id: &str) -> Option<String> {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.get(id).filter(|(_, at)| at.elapsed() < SESSION_TTL).map(|(t, _)| t.clone())
    }

    fn close(&self, id: &str) {
        let _ = self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }
}

struct Web {
    ctl: Arc<Controller>,
    sessions: Sessions,
    auditors: certs::CertAuditors,
}

type Reply = Response<Full<Bytes>>;

/// Serve the page on `addr` until `stop` (`tls` from [`certs::page_tls`]).
pub async fn serve(ctl: Arc<Controller>, addr: SocketAddr, tls: certs::PageTls, mut stop: watch::Receiver<bool>) {
    let certs::PageTls { acceptor, auditors } = tls;
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%addr, error = %e, "cannot serve the auditor's page");
            return;
        }
    };
    tracing::info!(%addr, "auditor's page listening (https)");
    let web = Arc::new(Web { ctl, sessions: Sessions::default(), auditors });
    let slots = Arc::new(Semaphore::new(WEB_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let (sock, peer) = tokio::select! {
            _ = stop.changed() => return,
            r = listener.accept() => match r { Ok(s) => s, Err(_) => continue },
        };
        let (web, acceptor) = (web.clone(), acceptor.clone());
        drop(tokio::spawn(async move {
            let _permit = permit;
            let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(sock)).await else {
                return;
            };
            let client: Arc<str> = Arc::from(peer.ip().to_string());
            let cert_actor: Option<Arc<str>> = web.cert_sign_in(&tls, &client).map(Arc::from);
            let service = hyper::service::service_fn(move |req| {
                let (web, cert_actor, client) = (web.clone(), cert_actor.clone(), client.clone());
                async move { Ok::<_, std::convert::Infallible>(web.handle(req, cert_actor.as_deref(), &client).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(tls), service);
            let _ = tokio::time::timeout(Duration::from_secs(300), conn).await;
        }));
    }
}

fn page(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    let set = |h: &mut hyper::HeaderMap, k: header::HeaderName, v: &'static str| {
        let _ = h.insert(k, header::HeaderValue::from_static(v));
    };
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        let _ = h.insert(header::CONTENT_TYPE, v);
    }
    // No script runs on these pages; styles are inline; nothing may frame them.
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    // same-origin: the page's own sign-in form then carries its Origin (no-referrer would send "null").
    set(h, header::REFERRER_POLICY, "same-origin");
    set(h, header::CACHE_CONTROL, "no-store");
    r
}

fn html(status: StatusCode, body: String) -> Reply {
    page(status, "text/html; charset=utf-8", body)
}

fn redirect(to: &str, cookie: Option<String>) -> Reply {
    let mut r = page(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", "");
    if let Ok(v) = header::HeaderValue::from_str(to) {
        let _ = r.headers_mut().insert(header::LOCATION, v);
    }
    if let Some(c) = cookie.and_then(|c| header::HeaderValue::from_str(&c).ok()) {
        let _ = r.headers_mut().insert(header::SET_COOKIE, c);
    }
    r
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v)
}

fn lang_of(query: &str) -> Lang {
    if query_param(query, "lang") == Some("en") { Lang::En } else { Lang::De }
}

/// `application/x-www-form-urlencoded` decoding of one value.
fn form_value(body: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let raw = query_param(text, name)?;
    let mut out = Vec::with_capacity(raw.len());
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// `Sec-Fetch-Site` says another site started the request (browsers send it; tools do not).
fn from_another_site(req: &Request<Incoming>) -> bool {
    req.headers()
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|site| site != "same-origin" && site != "none")
}

fn session_cookie(req: &Request<Incoming>) -> Option<String> {
    req.headers().get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|c| {
        c.split(';').map(str::trim).find_map(|kv| kv.strip_prefix(&format!("{COOKIE}="))).map(str::to_string)
    })
}

impl Web {
    /// A client certificate the handshake verified signs its connection in when it is listed;
    /// each such connection is one sign-in in the audit log, and so is each refusal.
    fn cert_sign_in(
        &self,
        tls: &tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        client: &str,
    ) -> Option<String> {
        let der = tls.get_ref().1.peer_certificates()?.first()?;
        match self.auditors.actor(der) {
            Ok(actor) => {
                self.ctl.audit(&actor, "web.sign_in", "the auditor's page (client certificate)", OK, "");
                Some(actor)
            }
            Err(why) => {
                self.ctl.audit_refusal(
                    client,
                    "anonymous",
                    "web.sign_in",
                    "the auditor's page (client certificate)",
                    &why,
                );
                None
            }
        }
    }

    /// The caller's token: a bearer header, or the session's.
    fn token(&self, req: &Request<Incoming>) -> Option<String> {
        if let Some(b) = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
            return b.strip_prefix("Bearer ").map(|t| t.trim().to_string());
        }
        session_cookie(req).and_then(|id| self.sessions.token(&id))
    }

    async fn handle(&self, req: Request<Incoming>, cert_actor: Option<&str>, client: &str) -> Reply {
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        let lang = lang_of(&query);
        match (req.method(), path.as_str()) {
            (&Method::POST, "/login") => return self.login(req, lang, client).await,
            (&Method::POST, "/logout") => {
                if let Some(id) = session_cookie(&req) {
                    self.sessions.close(&id);
                }
                let clear = format!("{COOKIE}=; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=0");
                return redirect(&format!("/?lang={}", lang.code()), Some(clear));
            }
            (&Method::GET | &Method::HEAD, _) => {}
            _ => {
                let mut r =
                    page(StatusCode::METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", "this page is read-only\n");
                let _ = r.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
                return r;
            }
        }
        let ctl = self.ctl.clone();
        // A token given is checked even on a certificate's connection: it names who acts.
        let viewer = match (self.token(&req), cert_actor) {
            (Some(token), _) => match ctl.authorize(Some(&token), Role::Auditor, "web.read", client) {
                Ok(v) => v,
                Err(_) => return html(StatusCode::UNAUTHORIZED, portal::sign_in(lang, true)),
            },
            // The browser presents the certificate to requests other sites start too (the session
            // cookie is SameSite=Strict, the certificate is not): those are refused, so no other
            // page can read reports or verify the chain in this person's name.
            (None, Some(_)) if from_another_site(&req) => {
                return page(StatusCode::FORBIDDEN, "text/plain; charset=utf-8", "request from another site refused\n");
            }
            (None, Some(actor)) => actor.to_string(),
            (None, None) if path == "/" || path == "/index.html" => {
                return html(StatusCode::OK, portal::sign_in(lang, false));
            }
            (None, None) => return redirect(&format!("/?lang={}", lang.code()), None),
        };
        let q = query.clone();
        let found = tokio::task::spawn_blocking(move || route(&ctl, &path, &q, lang, &viewer)).await;
        found.unwrap_or_else(|_| {
            page(StatusCode::INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8", "internal error\n")
        })
    }

    async fn login(&self, req: Request<Incoming>, lang: Lang, client: &str) -> Reply {
        // Only this page's own form may sign in (no sign-in planted by another site).
        if let Some(origin) = req.headers().get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
            let host = req.headers().get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
            if origin != format!("https://{host}") {
                return page(StatusCode::FORBIDDEN, "text/plain; charset=utf-8", "sign-in from another site refused\n");
            }
        }
        let read = tokio::time::timeout(FORM_TIME, Limited::new(req.into_body(), FORM_LIMIT).collect()).await;
        let body = match read {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(_)) => return page(StatusCode::PAYLOAD_TOO_LARGE, "text/plain; charset=utf-8", "form too large\n"),
            Err(_) => return page(StatusCode::REQUEST_TIMEOUT, "text/plain; charset=utf-8", "form too slow\n"),
        };
        let token = form_value(&body, "token").unwrap_or_default();
        let token = token.trim();
        match self.ctl.authorize(Some(token).filter(|t| !t.is_empty()), Role::Auditor, "web sign-in", client) {
            Ok(viewer) => {
                self.ctl.audit(&viewer, "web.sign_in", "the auditor's page", OK, "");
                let id = self.sessions.open(token.to_string());
                let cookie = format!(
                    "{COOKIE}={id}; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age={}",
                    SESSION_TTL.as_secs()
                );
                redirect(&format!("/?lang={}", lang.code()), Some(cookie))
            }
            // The refusal is already in the audit log (authorize records it).
            Err(_) => html(StatusCode::UNAUTHORIZED, portal::sign_in(lang, true)),
        }
    }
}

/// Read-only routes (on the blocking pool: sled reads and the chain's verification).
fn route(ctl: &Controller, path: &str, query: &str, lang: Lang, viewer: &str) -> Reply {
    let not_found = || {
        html(
            StatusCode::NOT_FOUND,
            format!(
                "<!DOCTYPE html><html lang=\"{}\"><head><meta charset=\"utf-8\"><title>404</title></head><body><main><h1>404</h1><p><a href=\"/\">Tresor</a></p></main></body></html>",
                lang.code()
            ),
        )
    };
    match path {
        "/" | "/index.html" => match overview(ctl, viewer) {
            Ok(o) => html(StatusCode::OK, portal::overview(&o, lang)),
            Err(e) => page(StatusCode::INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8", format!("{e}\n")),
        },
        "/audit" => {
            let from = query_param(query, "from").and_then(|f| f.parse::<u64>().ok());
            ctl.audit(viewer, "audit.read", "the audit log (web)", OK, "");
            audit_page(ctl, viewer, from, lang)
        }
        "/report-signing.pub.pem" => {
            page(StatusCode::OK, "application/x-pem-file", tresor_report::sign::public_key_pem(&ctl.state.report_key()))
        }
        _ => {
            let Some(rest) = path.strip_prefix("/reports/") else { return not_found() };
            let (id, json) = match rest.strip_suffix(".json") {
                Some(id) => (id, true),
                None => (rest, false),
            };
            let Ok(Some(rec)) = ctl.drill(id) else { return not_found() };
            ctl.audit(viewer, "report.read", &format!("drill {id} (web)"), OK, "");
            if json {
                let mut r = page(StatusCode::OK, "application/json", rec.report);
                if let Ok(v) = header::HeaderValue::from_str(&format!("attachment; filename=\"{id}.json\"")) {
                    let _ = r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
                }
                return r;
            }
            match tresor_report::drill::DrillReport::from_json(&rec.report).ok() {
                Some(report) => html(StatusCode::OK, tresor_report::html::render(&report, lang)),
                None => page(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain; charset=utf-8",
                    "the stored report does not parse\n",
                ),
            }
        }
    }
}

fn overview(ctl: &Controller, viewer: &str) -> crate::Result<portal::Overview> {
    let drills = ctl.drills("")?;
    let rows = drills
        .iter()
        .map(|d| portal::DrillRow {
            drill_id: d.drill_id.clone(),
            source: d.source.clone(),
            plan: format!("{} / {}", d.policy, d.plan),
            // The controller's time of the drill, so the page orders drills by one clock.
            started: chrono::DateTime::from_timestamp(d.started_unix, 0).map(|t| t.to_rfc3339()).unwrap_or_default(),
            verdict: if d.verdict == "PASS" { Verdict::Pass } else { Verdict::Fail },
            rto: Target::new(d.rto_s, d.rto_target_s),
            rpo: Target::new(d.rpo_s, d.rpo_target_s),
        })
        .collect();
    let when = |t: i64| {
        if t <= 0 {
            String::new()
        } else {
            chrono::DateTime::from_timestamp(t, 0).map(|d| d.to_rfc3339()).unwrap_or_default()
        }
    };
    let plans = ctl
        .plan_states(now_unix())?
        .into_iter()
        .map(|p| portal::PlanRow {
            plan: format!("{} / {}", p.policy, p.plan.name),
            source: format!("{}/{}", p.plan.agent, p.plan.source),
            last_run: when(p.record.last_run_unix),
            next_run: when(p.next_run_unix),
            overdue: p.overdue,
            failing: p.failing,
        })
        .collect();
    let mut undrilled: Vec<String> = ctl
        .policies()
        .values()
        .flat_map(|p| p.sources.iter().map(|s| format!("{}/{}", s.agent, s.name)))
        .filter(|s| !drills.iter().any(|d| &d.source == s))
        .collect();
    undrilled.sort();
    undrilled.dedup();
    let (audit, audit_pinned) = verify_audit(ctl)?;
    Ok(portal::Overview { viewer: viewer.into(), drills: rows, plans, undrilled, audit, audit_pinned })
}

/// The audit chain's state for the overview, and the pinned key's id when one is configured. The
/// chain is verified page by page (memory bounded by one page however long the log grows) and
/// from where the last look stopped, so a page load reads only what was written since; the whole
/// chain is verified again at least every `AUDIT_FULL_EVERY`, and whenever a checkpoint names
/// an entry before that position whose head was not kept.
fn verify_audit(
    ctl: &Controller,
) -> crate::Result<(Result<tresor_report::audit::ChainStatus, String>, Option<String>)> {
    use tresor_report::audit::{ChainPosition, ChainVerifier};
    let (key, pinned) = match &ctl.config.audit_pubkey {
        Some(path) => {
            let read = std::fs::read_to_string(path)
                .map_err(|e| e.to_string())
                .and_then(|t| tresor_report::sign::public_key_from_pem(&t).map_err(|e| e.to_string()));
            match read {
                Ok(k) => (k, Some(tresor_report::sign::key_id(&k))),
                Err(e) => return Ok((Err(format!("the pinned key {} cannot be read: {e}", path.display())), None)),
            }
        }
        None => (ctl.state.report_key(), None),
    };
    let checkpoints = AuditLog::checkpoints(&ctl.catalog)?;
    // Where to start, and when the whole chain was last verified.
    let (start, full_at) = {
        let cached = ctl.audit_verified.lock().unwrap_or_else(|p| p.into_inner());
        match &*cached {
            Some((at, full_at, k)) if full_at.elapsed() < AUDIT_FULL_EVERY && *k == key && at.covers(&checkpoints) => {
                (at.clone(), *full_at)
            }
            _ => (ChainPosition::start(), Instant::now()),
        }
    };
    let mut chain = ChainVerifier::resume(&checkpoints, &key, start);
    let mut from = chain.position().next;
    let result = loop {
        let page = AuditLog::entries(&ctl.catalog, from, crate::audit_log::AUDIT_PAGE)?;
        if let Err(e) = page.iter().try_for_each(|e| chain.push(e)) {
            break Err(e.to_string());
        }
        if page.len() < crate::audit_log::AUDIT_PAGE {
            let at = chain.position();
            let done = chain.finish().map_err(|e| e.to_string());
            let mut cached = ctl.audit_verified.lock().unwrap_or_else(|p| p.into_inner());
            *cached = done.is_ok().then_some((at, full_at, key));
            break done;
        }
        from += page.len() as u64;
    };
    Ok((result, pinned))
}

fn audit_page(ctl: &Controller, viewer: &str, from: Option<u64>, lang: Lang) -> Reply {
    let total = match AuditLog::head(&ctl.catalog) {
        Ok(h) => h.and_then(|h| h.get("seq").and_then(serde_json::Value::as_u64)).map_or(0, |s| s + 1),
        Err(e) => return page(StatusCode::INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8", format!("{e}\n")),
    };
    // Default: the newest page.
    let from = from.unwrap_or_else(|| total.saturating_sub(AUDIT_ROWS as u64)).min(total);
    let entries = match AuditLog::entries(&ctl.catalog, from, AUDIT_ROWS) {
        Ok(e) => e,
        Err(e) => return page(StatusCode::INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8", format!("{e}\n")),
    };
    let rows: Vec<portal::AuditRow> = entries
        .iter()
        .map(|e| portal::AuditRow {
            seq: e.get("seq").and_then(serde_json::Value::as_u64).unwrap_or(0),
            event: tresor_report::audit::Event::of_entry(e),
        })
        .collect();
    let prev = (from > 0).then(|| from.saturating_sub(AUDIT_ROWS as u64));
    let next = (from + (AUDIT_ROWS as u64) < total).then_some(from + AUDIT_ROWS as u64);
    html(StatusCode::OK, portal::audit_page(&rows, viewer, prev, next, lang))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_values_decode_and_odd_input_never_panics() {
        assert_eq!(form_value(b"x=1&token=tau_ab%2Bc+d", "token").as_deref(), Some("tau_ab+c d"));
        assert_eq!(form_value(b"token=abc%", "token").as_deref(), Some("abc%"), "a trailing % is kept");
        assert_eq!(form_value(b"token=%zz", "token"), None, "bad escapes refuse the value");
        assert_eq!(form_value(b"token=%ff", "token"), None, "escapes that make bad UTF-8 refuse it");
        assert_eq!(form_value(b"\xff\xfe", "token"), None);
        assert_eq!(form_value(b"other=1", "token"), None);
        assert_eq!(query_param("lang=en&from=7", "from"), Some("7"));
        assert_eq!(lang_of("lang=fr"), Lang::De, "unknown languages fall back to German");
    }

    #[test]
    fn sessions_end_when_closed_and_the_oldest_goes_beyond_the_bound() {
        let s = Sessions::default();
        let first = s.open("t-first".into());
        assert_eq!(s.token(&first).as_deref(), Some("t-first"));
        assert_eq!(s.token("not-a-session"), None);
        for i in 0..WEB_SESSIONS {
            let _ = s.open(format!("t-{i}"));
        }
        assert_eq!(s.token(&first), None, "the oldest session was dropped at the bound");
        let last = s.open("t-last".into());
        s.close(&last);
        assert_eq!(s.token(&last), None);
        assert!(s.0.lock().unwrap().len() <= WEB_SESSIONS);
    }
}
