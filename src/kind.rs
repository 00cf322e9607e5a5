//! The kinds of queue file: which pattern a file serves. A leaf module (it imports nothing), so
//! that both the on-file layout and the errors that name a kind can use it without importing
//! each other.

/// A pipeline (work queue).
pub const KIND_PIPELINE: u32 = 1;
/// A publish-subscribe channel.
pub const KIND_PUBSUB: u32 = 2;
/// A request-reply service.
pub const KIND_SERVICE: u32 = 3;

/// A human name for a kind, for error messages.
pub fn kind_name(kind: u32) -> &'static str {
    match kind {
        KIND_PIPELINE => "pipeline",
        KIND_PUBSUB => "publish-subscribe channel",
        KIND_SERVICE => "request-reply service",
        _ => "queue of unknown kind",
    }
}
