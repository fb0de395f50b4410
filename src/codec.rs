//! What every wire codec returns: a whole item and the bytes it used, or a
//! request for more input. Partial input is never an error.

/// Whether a parser found a whole item.
#[derive(Debug, PartialEq, Eq)]
pub enum Status<T> {
    /// The item (and, by convention, the number of bytes it used).
    Complete(T),
    /// More bytes are needed.
    Partial,
}
