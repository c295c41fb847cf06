//! The controller: scheduler, catalog, retention, drills. Filled by the control-plane issue; it
//! depends only on `tresor-proto` so far, and never on vault keys.

/// The API this controller will serve.
pub fn api_definition() -> &'static str {
    tresor_proto::PROTO
}
