//! The drill report as an accessible HTML page, in German or English, from the same data as the
//! JSON: the page language set, one `h1` and `h2` sections, tables with captions and header cells,
//! results in words (BESTANDEN / PASS) with colours of at least 4.5:1 contrast as a second cue, no
//! script, and the accessibility statement (Erklärung zur Barrierefreiheit).

use crate::drill::{DrillReport, Level, Verdict};

/// The page language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// Deutsch.
    De,
    /// English.
    En,
}

impl Lang {
    /// The BCP 47 code (`de`, `en`).
    pub fn code(self) -> &'static str {
        match self {
            Self::De => "de",
            Self::En => "en",
        }
    }
}

/// Every string of the page, by key: German, then English.
const STRINGS: &[(&str, &str, &str)] = &[
    ("title", "Bericht über die Wiederherstellungsübung", "Restore drill report"),
    ("verdict", "Gesamtergebnis", "Verdict"),
    ("pass", "BESTANDEN", "PASS"),
    ("fail", "NICHT BESTANDEN", "FAIL"),
    ("summary", "Zusammenfassung", "Summary"),
    ("summary_caption", "Kenndaten der Übung", "Facts of the drill"),
    ("field", "Angabe", "Field"),
    ("value", "Wert", "Value"),
    ("drill_id", "Übungs-ID", "Drill id"),
    ("plan", "Plan (Richtlinie / Name)", "Plan (policy / name)"),
    ("trigger", "Auslöser", "Trigger"),
    ("operator", "Ausgelöst von", "Started by"),
    ("source", "Datenquelle", "Source"),
    ("source_kind", "Art der Quelle", "Source kind"),
    ("snapshot", "Sicherung (Snapshot)", "Snapshot"),
    ("snapshot_time", "Zeitpunkt der Sicherung", "Snapshot time"),
    ("sandbox", "Testumgebung", "Sandbox"),
    ("started", "Beginn", "Started"),
    ("ended", "Ende", "Ended"),
    ("bytes", "Wiederhergestellte Daten", "Data restored"),
    ("throughput", "Durchsatz", "Throughput"),
    ("targets", "Ziele", "Targets"),
    ("targets_caption", "Gemessene Zeiten gegen die Ziele", "Measured times against the targets"),
    ("measure", "Größe", "Measure"),
    ("measured", "Gemessen", "Measured"),
    ("target", "Ziel", "Target"),
    ("result", "Ergebnis", "Result"),
    ("rpo", "Erreichter RPO (Datenverlust-Fenster)", "Achieved RPO (data-loss window)"),
    ("rto", "RTO (Dauer bis zur bestandenen Anwendungsprüfung)", "RTO (time until the application check passed)"),
    (
        "read_check",
        "Dauer der kryptografischen Leseprüfung (getrennt gemessen)",
        "Duration of the cryptographic read check (timed apart)",
    ),
    ("read_share", "Gelesener Anteil", "Share read"),
    ("seed", "Startwert der Stichprobe", "Sample seed"),
    ("checks", "Prüfungen", "Checks"),
    ("checks_caption", "Jede Prüfung mit Ergebnis und Zahlen", "Every check with its result and numbers"),
    ("level", "Ebene", "Level"),
    ("subject", "Gegenstand", "Subject"),
    ("check", "Prüfung", "Check"),
    ("detail", "Einzelheiten", "Details"),
    ("level_structure", "Struktur", "Structure"),
    ("level_read", "Kryptografisches Lesen", "Cryptographic read"),
    ("level_application", "Anwendung", "Application"),
    ("anomalies", "Auffälligkeiten", "Anomalies"),
    ("no_anomalies", "Keine.", "None."),
    ("provenance", "Herkunft und Nachweis", "Provenance and evidence"),
    ("versions", "Versionen (Tresor / Speicherformat)", "Versions (Tresor / storage format)"),
    ("key_slot", "Verwendeter Schlüsselplatz (kein Geheimnis)", "Key slot used (no secret)"),
    ("evidences", "Nachgewiesene IT-Grundschutz-Anforderungen", "IT-Grundschutz requirements evidenced"),
    ("signature", "Signatur", "Signature"),
    (
        "signature_text",
        "Der JSON-Bericht ist mit Ed25519 über seine kanonische Form (RFC 8785) signiert; prüfen mit: tresorctl report verify BERICHT.json --pubkey SCHLUESSEL.pem",
        "The JSON report is signed with Ed25519 over its canonical form (RFC 8785); check it with: tresorctl report verify REPORT.json --pubkey KEY.pem",
    ),
    ("accessibility", "Erklärung zur Barrierefreiheit", "Accessibility statement"),
    (
        "accessibility_text",
        "Diese Seite soll die Anforderungen der BITV 2.0 und der WCAG 2.1 auf Stufe AA erfüllen: Sprache ausgezeichnet, Überschriften und Tabellen mit Kopfzellen, Ergebnisse in Worten und nicht nur in Farbe, ausreichender Kontrast, keine Skripte. Barrieren melden Sie bitte der Stelle, die diese Übung betreibt.",
        "This page aims to meet BITV 2.0 and WCAG 2.1 level AA: its language is set, headings and tables have header cells, results are given in words and not by colour alone, contrast is sufficient, and there are no scripts. Please report barriers to the office that runs this drill.",
    ),
    ("seconds", "s", "s"),
];

pub(crate) fn t(lang: Lang, key: &str) -> &'static str {
    lookup(STRINGS, lang, key)
}

/// A string of a (key, German, English) table; [`MISSING`] when the key is not in it.
pub(crate) fn lookup(table: &[(&str, &'static str, &'static str)], lang: Lang, key: &str) -> &'static str {
    table
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|(_, de, en)| if lang == Lang::De { *de } else { *en })
        .unwrap_or(MISSING)
}

/// What a key without strings renders as, so a test can find it.
pub(crate) const MISSING: &str = "\u{27e6}missing string\u{27e7}";

pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

/// Text the agents and the controller write (findings, reasons) is English; on a German page it is
/// marked so, for screen readers to speak it as English (WCAG 2.1, 3.1.2 language of parts).
pub(crate) fn english(lang: Lang, s: &str) -> String {
    if lang == Lang::De && !s.is_empty() { format!("<span lang=\"en\">{}</span>", esc(s)) } else { esc(s) }
}

pub(crate) fn verdict(lang: Lang, v: Verdict) -> String {
    let (key, class) = if v == Verdict::Pass { ("pass", "pass") } else { ("fail", "fail") };
    format!("<strong class=\"{class}\">{}</strong>", t(lang, key))
}

/// A table's row of column headers.
pub(crate) fn header(cells: &[&str]) -> String {
    let cells: String = cells.iter().map(|c| format!("<th scope=\"col\">{c}</th>")).collect();
    format!("<tr>{cells}</tr>\n")
}

pub(crate) fn num(x: f64) -> String {
    if x.fract() == 0.0 { format!("{x:.0}") } else { format!("{x:.1}") }
}

/// The start of every page up to `<main>`: language, title (already escaped), the one style sheet
/// (colours of at least 4.5:1 contrast on white).
pub(crate) fn page_head(lang: Lang, title: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"{}\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{title}</title>\n<style>\nbody{{font-family:sans-serif;color:#1a1a1a;background:#fff;max-width:70em;margin:1em auto;padding:0 1em;line-height:1.5}}\ntable{{border-collapse:collapse;margin:0 0 1.5em}}caption{{text-align:left;font-weight:bold;padding:.3em 0}}\nth,td{{border:1px solid #555;padding:.3em .6em;text-align:left;vertical-align:top}}\n.pass{{color:#1b5e20}}.fail{{color:#b71c1c}}\na{{color:#0b4f9c}}\n</style>\n</head>\n<body>\n",
        lang.code()
    )
}

/// The report as a page in `lang`.
pub fn render(r: &DrillReport, lang: Lang) -> String {
    let s = |k: &str| t(lang, k);
    let row = |k: &str, v: String| format!("<tr><th scope=\"row\">{}</th><td>{v}</td></tr>\n", s(k));
    let mut h = String::new();
    h.push_str(&page_head(lang, &format!("{} {}", s("title"), esc(&r.drill_id))));
    h.push_str("<main>\n");
    h.push_str(&format!("<h1>{}: {}</h1>\n", s("title"), esc(&r.source)));
    h.push_str(&format!("<p>{}: {}</p>\n", s("verdict"), verdict(lang, r.verdict)));
    h.push_str(&format!("<h2>{}</h2>\n<table>\n<caption>{}</caption>\n", s("summary"), s("summary_caption")));
    h.push_str(&header(&[s("field"), s("value")]));
    h.push_str(&row("drill_id", esc(&r.drill_id)));
    h.push_str(&row("plan", esc(&format!("{} / {}", r.plan.policy, r.plan.name))));
    h.push_str(&row("trigger", esc(&r.plan.trigger)));
    h.push_str(&row("operator", esc(&r.plan.operator)));
    h.push_str(&row("source", esc(&r.source)));
    h.push_str(&row("source_kind", esc(&r.source_kind)));
    h.push_str(&row("snapshot", format!("<code>{}</code>", esc(&r.snapshot))));
    h.push_str(&row("snapshot_time", esc(&r.snapshot_time)));
    h.push_str(&row("sandbox", esc(&r.sandbox)));
    h.push_str(&row("started", esc(&r.started)));
    h.push_str(&row("ended", esc(&r.ended)));
    h.push_str(&row("bytes", format!("{} B", r.bytes)));
    h.push_str(&row("throughput", format!("{:.1} MB/s", r.throughput_bps / 1e6)));
    h.push_str("</table>\n");
    h.push_str(&format!("<h2>{}</h2>\n<table>\n<caption>{}</caption>\n", s("targets"), s("targets_caption")));
    h.push_str(&header(&[s("measure"), s("measured"), s("target"), s("result")]));
    for (k, tgt) in [("rpo", &r.rpo), ("rto", &r.rto)] {
        h.push_str(&format!(
            "<tr><th scope=\"row\">{}</th><td>{} {sec}</td><td>{} {sec}</td><td>{}</td></tr>\n",
            s(k),
            num(tgt.measured_s),
            num(tgt.target_s),
            verdict(lang, tgt.result),
            sec = s("seconds")
        ));
    }
    h.push_str("</table>\n<ul>\n");
    h.push_str(&format!("<li>{}: {} {}</li>\n", s("read_check"), num(r.read_check_s), s("seconds")));
    h.push_str(&format!("<li>{}: {} %</li>\n", s("read_share"), num(r.read_share_percent)));
    if let Some(seed) = r.read_seed {
        h.push_str(&format!("<li>{}: {seed}</li>\n", s("seed")));
    }
    h.push_str("</ul>\n");
    h.push_str(&format!("<h2>{}</h2>\n<table>\n<caption>{}</caption>\n", s("checks"), s("checks_caption")));
    h.push_str(&header(&[s("level"), s("subject"), s("check"), s("result"), s("detail")]));
    for c in &r.checks {
        let level = match c.level {
            Level::Structure => s("level_structure"),
            Level::Read => s("level_read"),
            Level::Application => s("level_application"),
        };
        h.push_str(&format!(
            "<tr><td>{level}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            esc(&c.subject),
            esc(&c.check),
            verdict(lang, c.result),
            english(lang, &c.detail)
        ));
    }
    h.push_str("</table>\n");
    h.push_str(&format!("<h2>{}</h2>\n", s("anomalies")));
    if r.anomalies.is_empty() {
        h.push_str(&format!("<p>{}</p>\n", s("no_anomalies")));
    } else {
        h.push_str("<ul>\n");
        for a in &r.anomalies {
            h.push_str(&format!("<li>{}</li>\n", english(lang, a)));
        }
        h.push_str("</ul>\n");
    }
    h.push_str(&format!("<h2>{}</h2>\n<ul>\n", s("provenance")));
    h.push_str(&format!("<li>{}: {} / {}</li>\n", s("versions"), esc(&r.tresor_version), r.format_version));
    h.push_str(&format!("<li>{}: {}</li>\n", s("key_slot"), esc(&r.key_slot)));
    h.push_str(&format!("<li>{}: {}</li>\n", s("evidences"), esc(&r.evidences.join(", "))));
    h.push_str(&format!("<li>{}: {}</li>\n</ul>\n", s("signature"), s("signature_text")));
    h.push_str(&format!("<h2>{}</h2>\n<p>{}</p>\n", s("accessibility"), s("accessibility_text")));
    h.push_str("</main>\n</body>\n</html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn german_and_english_have_every_string() {
        let mut keys = std::collections::HashSet::new();
        for (k, de, en) in STRINGS {
            assert!(keys.insert(*k), "{k} twice");
            assert!(!de.trim().is_empty() && !en.trim().is_empty(), "{k} is missing a language");
        }
        // Every string the renderer asks for exists, in every branch it can take.
        let mut r = DrillReport::sample();
        let mut pages = vec![render(&r, Lang::De), render(&r, Lang::En)];
        r.anomalies.clear();
        r.read_seed = None;
        r.checks[0].result = Verdict::Fail;
        let r = r.finished();
        pages.extend([render(&r, Lang::De), render(&r, Lang::En)]);
        for p in &pages {
            assert!(!p.contains(MISSING), "a string is missing:\n{p}");
        }
    }

    #[test]
    fn pages_set_their_language_and_give_results_in_words() {
        let mut r = DrillReport::sample();
        r.checks[2].result = Verdict::Fail;
        r.checks[2].detail = "tensor <layers.3> differs".into();
        let r = r.finished();
        let de = render(&r, Lang::De);
        let en = render(&r, Lang::En);
        assert!(de.contains("<html lang=\"de\">") && en.contains("<html lang=\"en\">"));
        assert!(de.contains("NICHT BESTANDEN") && en.contains(">FAIL<"));
        assert!(en.contains("<td>tensor &lt;layers.3&gt; differs</td>"), "text is escaped");
        assert!(de.contains("<td><span lang=\"en\">tensor &lt;layers.3&gt; differs</span></td>"), "English marked");
        assert!(!en.contains("<span lang="));
        assert!(de.contains("Erklärung zur Barrierefreiheit") && en.contains("Accessibility statement"));
        assert_eq!(de.matches("<h1>").count(), 1);
        assert!(!de.contains("<script"));
    }
}
