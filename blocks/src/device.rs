//! The [`Device`] trait: what a front-end (NBD, FUSE) needs from an open
//! export. Offsets and lengths are in bytes and need not be block-aligned.

use crate::Result;

/// An open export: a volume (read-write) or a snapshot (read-only).
///
/// Implementations are shared between connections, so every method takes
/// `&self` and must be safe to call concurrently. A successful `flush` makes
/// every write acknowledged before it durable; a write with `fua` is durable
/// when it returns.
pub trait Device: Send + Sync {
    /// The export name this device was opened as (`v` or `v@s`).
    fn name(&self) -> &str;
    /// Size in bytes.
    fn size(&self) -> u64;
    /// True for snapshots: writes, trims and zeroing fail with `ReadOnly`.
    fn read_only(&self) -> bool;
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> Result<()>;
    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<()>;
    /// Discards a range; it reads back as zeroes afterwards.
    fn trim(&self, offset: u64, len: u64) -> Result<()>;
    fn flush(&self) -> Result<()>;
}
