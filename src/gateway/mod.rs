//! The wire protocols web servers use to hand a client request to mailboxd.
//! Each maps its request onto [`crate::request::Request`] and renders
//! [`crate::request::Head`] in its own syntax; nothing else differs.

pub mod cgi;
pub mod fcgi;
pub mod http;
pub mod scgi;
