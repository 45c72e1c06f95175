//! Payments: the lifecycle ([`engine`]), the worker that brings payments in doubt to rest
//! ([`resolver`]), and their double-entry postings ([`ledger`]). Depends on the store and the
//! answer shapes; nothing here depends on the listeners.

pub mod engine;
pub mod ledger;
pub mod resolver;
pub mod risk;
