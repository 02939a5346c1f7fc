//! Fuzzes a whole NBD server connection: the input is everything a client
//! sends (client flags, options with their data, then transmission requests
//! and payloads), played against a small in-memory export through
//! `serve_stream`. The server must never panic, must stay within its limits,
//! and must always open with the fixed-newstyle greeting. Inputs that start
//! with the real client flags and `IHAVEOPT` reach option parsing
//! (`NBD_OPT_GO`/`INFO` data included) and, past `GO`, the request pipeline.

#![no_main]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use cairn_blocks::nbd::{Exports, Limits, NBDMAGIC, serve_stream};
use cairn_blocks::{Device, Error, Result};
use libfuzzer_sys::fuzz_target;

const DISK_BYTES: usize = 64 << 10;

struct MemDevice {
    name: String,
    data: Mutex<Vec<u8>>,
    read_only: bool,
}

impl Device for MemDevice {
    fn name(&self) -> &str {
        &self.name
    }
    fn size(&self) -> u64 {
        DISK_BYTES as u64
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        // The server checks ranges before it calls the device.
        let start = usize::try_from(offset).unwrap();
        buf.copy_from_slice(&self.data.lock().unwrap()[start..start + buf.len()]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64, _fua: bool) -> Result<()> {
        assert!(!self.read_only, "write reached a read-only export");
        let start = usize::try_from(offset).unwrap();
        self.data.lock().unwrap()[start..start + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn write_zeroes(&self, offset: u64, len: u64, _fua: bool) -> Result<()> {
        assert!(!self.read_only, "write-zeroes reached a read-only export");
        let start = usize::try_from(offset).unwrap();
        let end = usize::try_from(offset + len).unwrap();
        self.data.lock().unwrap()[start..end].fill(0);
        Ok(())
    }
    fn trim(&self, offset: u64, len: u64) -> Result<()> {
        self.write_zeroes(offset, len, false)
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
}

struct MemExports(BTreeMap<String, Arc<dyn Device>>);

impl Exports for MemExports {
    fn open_export(&self, name: &str) -> Result<Arc<dyn Device>> {
        self.0
            .get(name)
            .cloned()
            .ok_or_else(|| Error::VolumeNotFound {
                volume: name.to_owned(),
            })
    }
    fn export_names(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }
}

fn exports() -> Arc<MemExports> {
    let mut map: BTreeMap<String, Arc<dyn Device>> = BTreeMap::new();
    for (name, read_only) in [("d", false), ("d@s", true)] {
        map.insert(
            name.to_owned(),
            Arc::new(MemDevice {
                name: name.to_owned(),
                data: Mutex::new(vec![0; DISK_BYTES]),
                read_only,
            }),
        );
    }
    Arc::new(MemExports(map))
}

/// A writer that counts what the server sends and keeps only the start.
struct Sink {
    head: Vec<u8>,
    total: usize,
}

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let keep = buf.len().min(16usize.saturating_sub(self.head.len()));
        self.head.extend_from_slice(&buf[..keep]);
        self.total += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_request_bytes: 8 << 10,
        max_option_bytes: 1 << 10,
        max_connections: 1,
        max_connections_per_peer: 1,
        // A stream has no clock; these only have to be valid.
        handshake_timeout: std::time::Duration::from_secs(1),
        idle_timeout: std::time::Duration::from_secs(1),
        max_workers_per_connection: 2,
        max_in_flight_requests: 4,
        max_in_flight_bytes: 16 << 10,
    };
    let mut sink = Sink {
        head: Vec::new(),
        total: 0,
    };
    // Errors (EOF mid-request, bad magic) are the normal end of most inputs.
    let _ = serve_stream(exports(), limits, data, &mut sink);
    assert_eq!(sink.head[..8], NBDMAGIC.to_be_bytes());
    // Every reply is bounded by what the input asked for: an option reply or
    // a read's data can never exceed the limits times the requests sent.
    let requests = data.len() / 16 + 1;
    assert!(sink.total <= 18 + requests * (20 + 4096 + (8 << 10)));
});
