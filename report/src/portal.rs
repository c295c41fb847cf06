//! The auditor's pages, in German or English, built like the report page (`html`): the overview
//! (what needs attention first, every drill with its verdict and targets, the audit log's state),
//! the audit log, and the sign-in form. Read-only: the only forms sign in and out.

use crate::audit::{ChainStatus, Event};
use crate::drill::{Target, Verdict};
use crate::html::{Lang, english, esc, header, lookup, num, page_head, t, verdict};

/// The actor a client certificate signs in as begins with this (the controller writes it).
pub const CERT_ACTOR_PREFIX: &str = "auditor:cert:";

/// The portal's own strings, by key: German, then English.
const STRINGS: &[(&str, &str, &str)] = &[
    ("portal", "Tresor: Nachweise für die Prüfung", "Tresor: evidence for auditors"),
    ("signed_in", "Angemeldet als", "Signed in as"),
    ("read_only", "Diese Seiten sind nur lesbar.", "These pages are read-only."),
    ("sign_out", "Abmelden", "Sign out"),
    (
        "cert_sign_out",
        "Angemeldet mit Client-Zertifikat: Zum Abmelden die Karte entfernen oder den Browser schließen.",
        "Signed in by client certificate: remove the card or close the browser to sign out.",
    ),
    ("nav", "Bereiche", "Sections"),
    ("overview", "Übersicht", "Overview"),
    ("audit_log", "Prüfprotokoll", "Audit log"),
    ("other_lang", "English", "Deutsch"),
    ("attention", "Handlungsbedarf", "Needs attention"),
    ("attention_none", "Keine fehlgeschlagenen oder fehlenden Übungen.", "No failing or missing drills."),
    ("att_failed", "Letzte Übung nicht bestanden", "Newest drill failed"),
    ("att_overdue", "Geplante Übung fehlt", "Scheduled drill missing"),
    ("att_never", "Keine Übung für diese Quelle", "No drill of this source"),
    ("attention_caption", "Fehlgeschlagene und fehlende Übungen", "Failing and missing drills"),
    ("what", "Befund", "Finding"),
    ("drills", "Wiederherstellungsübungen", "Restore drills"),
    (
        "drills_caption",
        "Jede Übung, nicht bestandene zuerst, dann die neuesten",
        "Every drill, failed ones first, then the newest",
    ),
    ("no_drills", "Noch keine Übungen.", "No drills yet."),
    ("started", "Beginn", "Started"),
    ("source", "Datenquelle", "Source"),
    ("plan", "Plan", "Plan"),
    ("verdict", "Ergebnis", "Verdict"),
    ("rto", "RTO gemessen / Ziel", "RTO measured / target"),
    ("rpo", "RPO erreicht / Ziel", "RPO achieved / target"),
    ("report", "Bericht", "Report"),
    ("report_link", "Bericht", "Report"),
    ("json", "JSON (signiert)", "JSON (signed)"),
    ("plans", "Übungspläne", "Drill plans"),
    ("plans_caption", "Geplante Übungen und ihr Stand", "Scheduled drills and their state"),
    ("last_run", "Letzte Übung", "Last drill"),
    ("next_run", "Nächste Übung", "Next drill"),
    ("state", "Zustand", "State"),
    ("state_ok", "in Ordnung", "ok"),
    ("state_overdue", "ÜBERFÄLLIG", "OVERDUE"),
    ("state_failing", "NICHT BESTANDEN", "FAILING"),
    ("never", "nie", "never"),
    ("audit_state", "Zustand des Prüfprotokolls", "State of the audit log"),
    ("audit_valid", "GÜLTIG", "VALID"),
    (
        "audit_self_attested",
        "selbst bestätigt: der Controller prüft mit seinem eigenen Schlüssel; unabhängig prüfen Sie mit dem öffentlichen Schlüssel und den Kontrollpunkten aus dem Tresor (tresorctl audit verify --pubkey ... --checkpoints ...)",
        "self-attested: the controller checks with its own key; check independently with the public key and the checkpoints from the vault (tresorctl audit verify --pubkey ... --checkpoints ...)",
    ),
    ("audit_pinned", "geprüft mit dem hinterlegten Schlüssel", "checked against the pinned key"),
    ("audit_invalid", "UNGÜLTIG", "NOT VALID"),
    (
        "audit_counts",
        "Einträge lückenlos verkettet ab dem ersten; signierte Kontrollpunkte erreicht; Einträge nach dem neuesten Kontrollpunkt",
        "entries chained from the first; signed checkpoints met; entries after the newest checkpoint",
    ),
    ("pubkey", "Öffentlicher Schlüssel der Berichte (PEM)", "Report-signing public key (PEM)"),
    ("audit_caption", "Einträge des Prüfprotokolls, älteste zuerst", "Audit log entries, oldest first"),
    ("seq", "Nr.", "No."),
    ("time", "Zeit", "Time"),
    ("actor", "Wer", "Actor"),
    ("action", "Aktion", "Action"),
    ("object", "Gegenstand", "Object"),
    ("outcome", "Ausgang", "Outcome"),
    ("reason", "Grund", "Reason"),
    ("older", "Frühere Einträge", "Earlier entries"),
    ("newer", "Spätere Einträge", "Later entries"),
    ("sign_in", "Anmelden", "Sign in"),
    (
        "sign_in_text",
        "Melden Sie sich mit Ihrem Zugangstoken an (Rolle Prüfer oder höher).",
        "Sign in with your access token (auditor role or higher).",
    ),
    ("token", "Zugangstoken", "Access token"),
    ("sign_in_failed", "Anmeldung fehlgeschlagen", "Sign-in failed"),
];

fn p(lang: Lang, key: &str) -> &'static str {
    lookup(STRINGS, lang, key)
}

/// One drill in the overview.
#[derive(Debug, Clone)]
pub struct DrillRow {
    /// Id (links to `reports/ID`).
    pub drill_id: String,
    /// `AGENT/SOURCE`.
    pub source: String,
    /// `POLICY / PLAN`.
    pub plan: String,
    /// RFC 3339.
    pub started: String,
    /// Verdict.
    pub verdict: Verdict,
    /// RTO.
    pub rto: Target,
    /// RPO.
    pub rpo: Target,
}

/// One drill plan in the overview.
#[derive(Debug, Clone)]
pub struct PlanRow {
    /// `POLICY / PLAN`.
    pub plan: String,
    /// `AGENT/SOURCE`.
    pub source: String,
    /// Last drill's start (RFC 3339), empty if never.
    pub last_run: String,
    /// Next slot (RFC 3339).
    pub next_run: String,
    /// A slot passed without a drill.
    pub overdue: bool,
    /// The last drill failed.
    pub failing: bool,
}

/// Everything the overview shows.
#[derive(Debug, Clone)]
pub struct Overview {
    /// Who is looking (`ROLE:TOKEN-ID`).
    pub viewer: String,
    /// Every drill.
    pub drills: Vec<DrillRow>,
    /// Every plan.
    pub plans: Vec<PlanRow>,
    /// Sources no drill ever covered.
    pub undrilled: Vec<String>,
    /// The audit log's verification: what it covers, or why it does not verify.
    pub audit: Result<ChainStatus, String>,
    /// The key id the chain was checked against when it is pinned apart from the controller
    /// (controller.toml `audit_pubkey`); `None`: the controller's own key, self-attested.
    pub audit_pinned: Option<String>,
}

/// One audit entry as shown: its position and what it records.
#[derive(Debug, Clone)]
pub struct AuditRow {
    /// Position.
    pub seq: u64,
    /// The entry's fields.
    pub event: Event,
}

fn with_lang(href: &str, lang: Lang) -> String {
    let sep = if href.contains('?') { '&' } else { '?' };
    format!("{href}{sep}lang={}", lang.code())
}

fn other(lang: Lang) -> Lang {
    if lang == Lang::De { Lang::En } else { Lang::De }
}

/// Header with the navigation and the sign-out form; `here` is the page's own path.
fn top(lang: Lang, title: &str, viewer: &str, here: &str) -> String {
    let mut h = page_head(lang, &format!("{title} – {}", p(lang, "portal")));
    // A certificate's sign-in lasts as long as the browser presents it: a sign-out button would
    // only bring the person straight back.
    let sign_out = if viewer.starts_with(CERT_ACTOR_PREFIX) {
        format!("<p>{}</p>\n", p(lang, "cert_sign_out"))
    } else {
        format!(
            "<form method=\"post\" action=\"/logout\"><button type=\"submit\">{}</button></form>\n",
            p(lang, "sign_out")
        )
    };
    h.push_str(&format!(
        "<header>\n<p>{}: <strong>{}</strong>. {}</p>\n<nav aria-label=\"{}\">\n<ul>\n<li><a href=\"{}\">{}</a></li>\n<li><a href=\"{}\">{}</a></li>\n<li><a href=\"{}\" lang=\"{}\">{}</a></li>\n</ul>\n</nav>\n{}</header>\n<main>\n",
        p(lang, "signed_in"),
        esc(viewer),
        p(lang, "read_only"),
        p(lang, "nav"),
        with_lang("/", lang),
        p(lang, "overview"),
        with_lang("/audit", lang),
        p(lang, "audit_log"),
        with_lang(here, other(lang)),
        other(lang).code(),
        p(lang, "other_lang"),
        sign_out,
    ));
    h
}

fn bottom(lang: Lang) -> String {
    format!(
        "</main>\n<footer>\n<h2>{}</h2>\n<p>{}</p>\n</footer>\n</body>\n</html>\n",
        t(lang, "accessibility"),
        t(lang, "accessibility_text")
    )
}

fn target(lang: Lang, x: &Target) -> String {
    format!("{} / {} {} {}", num(x.measured_s), num(x.target_s), t(lang, "seconds"), verdict(lang, x.result))
}

/// The overview: attention first, then the drills (failed first), the plans, and the audit log.
pub fn overview(o: &Overview, lang: Lang) -> String {
    let mut h = top(lang, p(lang, "overview"), &o.viewer, "/");
    h.push_str(&format!("<h1>{}</h1>\n", p(lang, "portal")));

    // What needs attention: failed newest drills, overdue plans, sources never drilled.
    let mut by_time: Vec<&DrillRow> = o.drills.iter().collect();
    by_time.sort_by(|a, b| b.started.cmp(&a.started));
    let mut newest: Vec<&DrillRow> = Vec::new();
    for d in by_time {
        if !newest.iter().any(|n| n.source == d.source) {
            newest.push(d);
        }
    }
    let mut att: Vec<(String, String)> = Vec::new();
    for d in newest.iter().filter(|d| d.verdict == Verdict::Fail) {
        att.push((
            esc(&d.source),
            format!(
                "{}: <a href=\"{}\">{} {}</a>",
                p(lang, "att_failed"),
                with_lang(&format!("/reports/{}", esc(&d.drill_id)), lang),
                p(lang, "report_link"),
                esc(&d.drill_id)
            ),
        ));
    }
    for pl in o.plans.iter().filter(|pl| pl.overdue) {
        att.push((esc(&pl.source), format!("{}: {}", p(lang, "att_overdue"), esc(&pl.plan))));
    }
    for s in &o.undrilled {
        att.push((esc(s), p(lang, "att_never").to_string()));
    }
    h.push_str(&format!("<h2>{}</h2>\n", p(lang, "attention")));
    if att.is_empty() {
        h.push_str(&format!("<p>{}</p>\n", p(lang, "attention_none")));
    } else {
        h.push_str(&format!("<table>\n<caption>{}</caption>\n", p(lang, "attention_caption")));
        h.push_str(&header(&[p(lang, "source"), p(lang, "what")]));
        for (s, what) in &att {
            h.push_str(&format!(
                "<tr><th scope=\"row\">{s}</th><td><strong class=\"fail\">{what}</strong></td></tr>\n"
            ));
        }
        h.push_str("</table>\n");
    }

    // Every drill: failed ones first, then by time, newest first.
    let mut drills = o.drills.clone();
    drills.sort_by(|a, b| {
        (a.verdict == Verdict::Pass).cmp(&(b.verdict == Verdict::Pass)).then(b.started.cmp(&a.started))
    });
    h.push_str(&format!("<h2>{}</h2>\n", p(lang, "drills")));
    if drills.is_empty() {
        h.push_str(&format!("<p>{}</p>\n", p(lang, "no_drills")));
    } else {
        h.push_str(&format!("<table id=\"drills\">\n<caption>{}</caption>\n", p(lang, "drills_caption")));
        h.push_str(&header(&[
            p(lang, "started"),
            p(lang, "source"),
            p(lang, "plan"),
            p(lang, "verdict"),
            p(lang, "rto"),
            p(lang, "rpo"),
            p(lang, "report"),
        ]));
        for d in &drills {
            let id = esc(&d.drill_id);
            h.push_str(&format!(
                "<tr data-drill=\"{id}\"><td>{}</td><th scope=\"row\">{}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><a href=\"{}\">{} {id}</a> (<a href=\"/reports/{id}.json\">{}</a>)</td></tr>\n",
                esc(&d.started),
                esc(&d.source),
                esc(&d.plan),
                verdict(lang, d.verdict),
                target(lang, &d.rto),
                target(lang, &d.rpo),
                with_lang(&format!("/reports/{id}"), lang),
                p(lang, "report_link"),
                p(lang, "json"),
            ));
        }
        h.push_str("</table>\n");
    }

    if !o.plans.is_empty() {
        h.push_str(&format!(
            "<h2>{}</h2>\n<table>\n<caption>{}</caption>\n",
            p(lang, "plans"),
            p(lang, "plans_caption")
        ));
        h.push_str(&header(&[
            p(lang, "plan"),
            p(lang, "source"),
            p(lang, "last_run"),
            p(lang, "next_run"),
            p(lang, "state"),
        ]));
        for pl in &o.plans {
            let state = match (pl.failing, pl.overdue) {
                (true, _) => format!("<strong class=\"fail\">{}</strong>", p(lang, "state_failing")),
                (false, true) => format!("<strong class=\"fail\">{}</strong>", p(lang, "state_overdue")),
                _ => p(lang, "state_ok").to_string(),
            };
            let last = if pl.last_run.is_empty() { p(lang, "never").to_string() } else { esc(&pl.last_run) };
            h.push_str(&format!(
                "<tr><th scope=\"row\">{}</th><td>{}</td><td>{last}</td><td>{}</td><td>{state}</td></tr>\n",
                esc(&pl.plan),
                esc(&pl.source),
                esc(&pl.next_run)
            ));
        }
        h.push_str("</table>\n");
    }

    h.push_str(&format!("<h2>{}</h2>\n", p(lang, "audit_state")));
    let attested = match &o.audit_pinned {
        Some(id) => format!("{} {}", p(lang, "audit_pinned"), esc(id)),
        None => p(lang, "audit_self_attested").to_string(),
    };
    match &o.audit {
        Ok(c) => h.push_str(&format!(
            "<p id=\"audit-state\"><strong class=\"pass\">{}</strong> ({attested}): {} / {} / {} ({})</p>\n",
            p(lang, "audit_valid"),
            c.entries,
            c.checkpoints,
            c.unanchored,
            p(lang, "audit_counts")
        )),
        Err(why) => h.push_str(&format!(
            "<p id=\"audit-state\"><strong class=\"fail\">{}</strong>: {}</p>\n",
            p(lang, "audit_invalid"),
            english(lang, why)
        )),
    }
    h.push_str(&format!("<p><a href=\"/report-signing.pub.pem\">{}</a></p>\n", p(lang, "pubkey")));
    h.push_str(&bottom(lang));
    h
}

/// A page of the audit log; `prev`/`next` are the `from` of the neighbouring pages.
pub fn audit_page(rows: &[AuditRow], viewer: &str, prev: Option<u64>, next: Option<u64>, lang: Lang) -> String {
    let mut h = top(lang, p(lang, "audit_log"), viewer, "/audit");
    h.push_str(&format!(
        "<h1>{}</h1>\n<table>\n<caption>{}</caption>\n",
        p(lang, "audit_log"),
        p(lang, "audit_caption")
    ));
    h.push_str(&header(&[
        p(lang, "seq"),
        p(lang, "time"),
        p(lang, "actor"),
        p(lang, "action"),
        p(lang, "object"),
        p(lang, "outcome"),
        p(lang, "reason"),
    ]));
    for r in rows {
        let e = &r.event;
        h.push_str(&format!(
            "<tr><th scope=\"row\">{}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            r.seq,
            esc(&e.time),
            esc(&e.actor),
            esc(&e.action),
            english(lang, &e.object),
            english(lang, &e.outcome),
            english(lang, &e.reason)
        ));
    }
    h.push_str("</table>\n");
    for (from, key) in [(prev, "older"), (next, "newer")] {
        if let Some(f) = from {
            h.push_str(&format!(
                "<p><a href=\"{}\">{}</a></p>\n",
                with_lang(&format!("/audit?from={f}"), lang),
                p(lang, key)
            ));
        }
    }
    h.push_str(&bottom(lang));
    h
}

/// The sign-in form; `failed` after a refused token.
pub fn sign_in(lang: Lang, failed: bool) -> String {
    let mut h = page_head(lang, &format!("{} – {}", p(lang, "sign_in"), p(lang, "portal")));
    h.push_str(&format!("<main>\n<h1>{}</h1>\n", p(lang, "portal")));
    if failed {
        h.push_str(&format!("<p role=\"alert\"><strong class=\"fail\">{}</strong></p>\n", p(lang, "sign_in_failed")));
    }
    h.push_str(&format!(
        "<h2>{}</h2>\n<p>{}</p>\n<form method=\"post\" action=\"{}\">\n<p><label for=\"token\">{}</label><br>\n<input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"off\" required></p>\n<p><button type=\"submit\">{}</button></p>\n</form>\n<p><a href=\"{}\" lang=\"{}\">{}</a></p>\n",
        p(lang, "sign_in"),
        p(lang, "sign_in_text"),
        with_lang("/login", lang),
        p(lang, "token"),
        p(lang, "sign_in"),
        with_lang("/", other(lang)),
        other(lang).code(),
        p(lang, "other_lang"),
    ));
    h.push_str(&bottom(lang));
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::html::MISSING;

    fn sample() -> Overview {
        let drill = |id: &str, v: Verdict| DrillRow {
            drill_id: id.into(),
            source: "gpu-01/models".into(),
            plan: "nightly / weekly".into(),
            started: format!("2026-11-2{}T04:00:00Z", id.len()),
            verdict: v,
            rto: Target::new(12.0, 3600.0),
            rpo: Target::new(7200.0, 93_600.0),
        };
        Overview {
            viewer: "auditor:0123456789ab".into(),
            drills: vec![drill("j-ok", Verdict::Pass), drill("j-bad-one", Verdict::Fail)],
            plans: vec![PlanRow {
                plan: "nightly / weekly".into(),
                source: "gpu-01/models".into(),
                last_run: String::new(),
                next_run: "2026-12-06T03:00:00Z".into(),
                overdue: true,
                failing: true,
            }],
            undrilled: vec!["db-01/<pg>".into()],
            audit: Err("entry 3 was changed".into()),
            audit_pinned: None,
        }
    }

    #[test]
    fn every_portal_string_exists_in_both_languages_and_is_used() {
        let mut keys = std::collections::HashSet::new();
        for (k, de, en) in STRINGS {
            assert!(keys.insert(*k), "{k} twice");
            assert!(!de.trim().is_empty() && !en.trim().is_empty(), "{k} is missing a language");
        }
        let mut o = sample();
        let event = Event {
            time: "t".into(),
            actor: "admin:x".into(),
            action: "enroll".into(),
            object: "agent a".into(),
            outcome: "ok".into(),
            reason: String::new(),
        };
        let rows = vec![AuditRow { seq: 0, event }];
        let mut pages = Vec::new();
        for lang in [Lang::De, Lang::En] {
            pages.push(overview(&o, lang));
            pages.push(audit_page(&rows, "auditor:x", Some(0), Some(2), lang));
            pages.push(sign_in(lang, true));
        }
        o.plans[0].failing = false;
        pages.push(overview(&o, Lang::En));
        o.viewer = "auditor:cert:Erika Mustermann:0011223344556677".into();
        let by_card = overview(&o, Lang::En);
        assert_eq!(by_card.matches("<form").count(), 0, "no sign-out button that would not sign out");
        pages.push(by_card);
        o.drills.clear();
        o.plans[0].overdue = false;
        o.plans[0].failing = false;
        o.plans[0].last_run = "2026-11-20T04:00:00Z".into();
        o.undrilled.clear();
        o.audit = Ok(ChainStatus { entries: 10, checkpoints: 2, unanchored: 1 });
        pages.extend([overview(&o, Lang::De), overview(&o, Lang::En)]);
        o.audit_pinned = Some("e9348e9032cedb15".into());
        pages.extend([overview(&o, Lang::De), overview(&o, Lang::En)]);
        for page in &pages {
            assert!(!page.contains(MISSING), "a string is missing:\n{page}");
        }
        for (k, _, _) in STRINGS {
            assert!(pages.iter().any(|pg| pg.contains(p(Lang::En, k))), "string {k} is never shown");
        }
    }

    #[test]
    fn failures_come_first_and_everything_is_escaped_and_in_words() {
        let en = overview(&sample(), Lang::En);
        let de = overview(&sample(), Lang::De);
        assert!(en.contains("<html lang=\"en\">") && de.contains("<html lang=\"de\">"));
        // Positions must exist: a missing row must not pass as "first" (None < Some).
        let at = |s: &str| en.find(s).unwrap_or_else(|| panic!("{s} is not on the page"));
        assert!(at("data-drill=\"j-bad-one\"") < at("data-drill=\"j-ok\""), "failed drills lead");
        assert!(at("Needs attention") < at("Restore drills"));
        assert!(en.contains("db-01/&lt;pg&gt;") && !en.contains("<pg>"));
        assert!(en.contains("NOT VALID") && de.contains("UNGÜLTIG"));
        assert!(en.contains(">FAIL<") && de.contains("NICHT BESTANDEN"));
        assert!(!en.contains("<script"));
        assert_eq!(en.matches("<h1>").count(), 1);
        assert_eq!(en.matches("<form").count(), 1, "the only form signs out");
    }
}
