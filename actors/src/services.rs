//! The shared services every actor and the gateway use: the journal, the
//! block pool, the bus (for publishing events), the limits, the operator's
//! security settings, the hooks service and the cluster key that seals
//! secrets. Cheap to clone.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use cairn_blocks::Pool;
use cairn_schema::event::PlacedVolume;
use cairn_schema::{ApiError, ErrorCode, EventRecord, subject};

use crate::bus::Bus;
use crate::journal::{self, Journal};

#[derive(Clone)]
pub struct Services {
    /// The redb journal, or a twin in tests.
    pub journal: Arc<dyn Journal>,
    pub pool: Arc<Pool>,
    pub bus: Bus,
    pub limits: crate::Limits,
    /// This node's name.
    pub node: String,
    /// (node, disk) → index of that disk in the block pool.
    pub disk_index: Arc<BTreeMap<(String, String), u16>>,
    /// The data dir (absolute): repositories and keys `repo add` makes.
    pub data_dir: Arc<std::path::PathBuf>,
    /// The operator's security settings (`crate::security`).
    pub security: Arc<crate::security::Security>,
    /// Runs app hooks under the operator's grants (`crate::hooks`).
    pub hooks: Arc<crate::hooks::Hooks>,
    /// Seals secrets before they reach the journal (`crate::secrets`).
    pub secrets: Arc<crate::secrets::ClusterKey>,
    /// Where this node serves NBD, once the server has bound (set once at
    /// start-up): the address `volume show` gives clients.
    pub nbd: Arc<std::sync::OnceLock<cairn_blocks::nbd::ListenAddr>>,
}

impl Services {
    /// A URI an NBD client opens for `tenant`'s volume (or `volume@snap`)
    /// on this node, or `None` when NBD is off. The unix socket and
    /// unauthenticated TCP serve engine names (`acme:v`); TCP with client
    /// certificates serves a tenant its own names (`v`), over TLS
    /// (`nbds://`, libnbd's spelling; qemu takes `nbd://` with
    /// `tls-creds`).
    pub fn nbd_uri(&self, tenant: &str, volume: &str) -> Option<String> {
        let engine = crate::volume::engine_name(tenant, volume);
        let tls = &self.security.nbd;
        Some(match self.nbd.get()? {
            cairn_blocks::nbd::ListenAddr::Unix(path) => {
                format!("nbd+unix:///{engine}?socket={}", path.display())
            }
            cairn_blocks::nbd::ListenAddr::Tcp(addr) if tls.tls_cert.is_none() => {
                format!("nbd://{addr}/{engine}")
            }
            cairn_blocks::nbd::ListenAddr::Tcp(addr) if tls.tls_client_ca.is_none() => {
                format!("nbds://{addr}/{engine}")
            }
            cairn_blocks::nbd::ListenAddr::Tcp(addr) => format!("nbds://{addr}/{volume}"),
        })
    }

    /// A placed volume's slices as (slice, pool disk); slices on disks this
    /// pool does not have are left to the pool's own choice.
    pub fn slice_disks(&self, placed: &PlacedVolume) -> Vec<(u32, u16)> {
        placed
            .slices
            .iter()
            .filter_map(|s| {
                self.disk_index
                    .get(&(s.node.clone(), s.disk.clone()))
                    .map(|idx| (s.index, *idx))
            })
            .collect()
    }

    /// Publishes committed records on their event subjects (the outbox).
    /// Failures are logged: the journal, not the bus, is the record.
    pub async fn publish(&self, records: &[EventRecord]) {
        for record in records {
            let view = record.view();
            let subject = subject::event(&record.tenant, &record.aggregate, &view.kind);
            let body = serde_json::to_vec(&view).expect("views serialize");
            if let Err(e) = self.bus.publish(&subject, Bytes::from(body)).await {
                tracing::warn!(error = %e, seq = record.seq, "event not published");
            }
        }
    }

    /// Runs blocking block-engine work off the actor thread.
    pub async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Pool) -> cairn_blocks::Result<T> + Send + 'static,
    ) -> Result<T, ApiError> {
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || work(&pool))
            .await
            .map_err(|e| ApiError::internal(format!("block engine task failed: {e}")))?
            .map_err(|e| blocks_error(&e))
    }
}

// The control plane plans slices of the size the block engine pins.
const _: () = assert!(cairn_blocks::SLICE_BYTES == cairn_schema::names::SLICE_BYTES);

/// Maps a block-engine error onto an API error (the code table is
/// [`cairn_repo::blocks_code`], shared with the repository's errors).
pub fn blocks_error(e: &cairn_blocks::Error) -> ApiError {
    ApiError::new(cairn_repo::blocks_code(e), e.to_string())
}

/// Maps a journal error onto an API error code.
pub fn journal_error(e: &journal::Error) -> ApiError {
    let code = match e {
        journal::Error::Corrupted { .. } => ErrorCode::Corrupted,
        journal::Error::Closed | journal::Error::Storage { .. } => ErrorCode::Unavailable,
    };
    ApiError::new(code, e.to_string())
}

/// Total and free bytes of the filesystem holding `dir`.
pub fn fs_space(dir: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into the struct we pass; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
    (rc == 0).then(|| {
        let unit = st.f_frsize as u64;
        (st.f_blocks as u64 * unit, st.f_bavail as u64 * unit)
    })
}
