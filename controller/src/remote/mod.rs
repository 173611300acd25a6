//! The remote-config client: the poll loop, the request it sends, the fetcher that sends
//! it, and the backoff policy between polls.

pub mod backoff;
pub mod btf_gate;
pub mod fetch;
pub mod poll;
pub mod request;
pub mod schedule;
