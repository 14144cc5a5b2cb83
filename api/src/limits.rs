//! The sizes the API takes and gives, in one place, so that the server's
//! limits and its clients' agree.

/// Largest request a controller decodes: a `CreateBatch` of
/// [`MAX_BATCH_ITEMS`] pods fits.
pub const MAX_REQUEST_BYTES: usize = 8 << 20;
/// Largest response a controller sends and a client decodes: a page of a
/// list, a range read of many keys.
pub const MAX_RESPONSE_BYTES: usize = 256 << 20;
/// Largest encoded object.
pub const MAX_OBJECT_BYTES: usize = 1 << 20;
/// Most binds (or pods) one `BindBatch` (`CreateBatch`) call may carry.
pub const MAX_BATCH_ITEMS: usize = 10_000;
