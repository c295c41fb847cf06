//! The control plane end to end: a real controller, agent daemons and tresorctl on loopback.

mod faults;
mod lifecycle;
mod security;
