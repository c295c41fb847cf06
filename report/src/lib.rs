//! # tresor-report
//!
//! Documents an auditor must be able to trust without trusting Tresor: canonical JSON
//! ([`jcs`], RFC 8785) and an Ed25519 signature over it embedded in the document ([`sign`]);
//! `tresorctl report verify` checks them offline with nothing but the public key. The drill report
//! ([`drill`], [`html`]) and the audit chain ([`audit`]) are what the controller writes for every
//! drill and control-plane action; [`portal`] renders the auditor's read-only pages.
//!
//! No I/O and no workspace dependency: this crate sits at the bottom, beside `proto`.

pub mod audit;
pub mod drill;
pub mod html;
pub mod jcs;
pub mod portal;
pub mod sign;
