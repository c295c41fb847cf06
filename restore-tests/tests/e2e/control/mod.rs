//! The control plane end to end: a real controller, agent daemons and tresorctl on loopback.

mod alerts;
mod compromised;
mod faults;
mod lifecycle;
mod second_site;
mod security;
