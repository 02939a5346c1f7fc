//! Tests of the repository's security rules: the safe open of key files,
//! tenants' roots (link and `..` escapes), the S3 allowlist, the server's
//! credentials, the `.tmp` sweep, and each bound on what a hostile
//! repository (whoever holds its key) can make a reader allocate.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use cairn_schema::ErrorCode;

use super::*;

fn confined(extra: &[(&str, &Path)]) -> Grants {
    let mut security = Grants {
        confined: true,
        ..Grants::default()
    };
    for (tenant, dir) in extra {
        security
            .repo_roots
            .entry((*tenant).to_owned())
            .or_default()
            .push(dir.to_path_buf());
    }
    security
}

fn key_hex() -> String {
    "ab".repeat(32)
}

/// A data dir with tenants a and b, each with a key file.
fn data_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for t in ["a", "b"] {
        std::fs::create_dir_all(data.join("repo-keys").join(t)).unwrap();
        std::fs::create_dir_all(data.join("repos").join(t)).unwrap();
        std::fs::write(data.join(format!("repo-keys/{t}/k.key")), key_hex()).unwrap();
    }
    (dir, data)
}

#[test]
fn key_files_are_opened_without_links_regular_and_small() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.key");
    std::fs::write(&good, key_hex()).unwrap();
    assert!(Key::from_file(&good).is_ok());
    // A link is not followed, even to a good key.
    let link = dir.path().join("link.key");
    std::os::unix::fs::symlink(&good, &link).unwrap();
    let e = Key::from_file(&link).unwrap_err();
    assert!(e.to_string().contains("symbolic link"), "{e}");
    // A FIFO with no writer: refused at once (a blocking open would hang
    // this test forever).
    let fifo = dir.path().join("fifo.key");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a C string path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let e = Key::from_file(&fifo).unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");
    // A device is not a regular file either.
    let e = Key::from_file(Path::new("/dev/zero")).unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");
    // A large file is refused before reading, without its size.
    let big = dir.path().join("big.key");
    std::fs::write(&big, vec![b'x'; 650_000]).unwrap();
    let e = Key::from_file(&big).unwrap_err();
    assert!(!e.to_string().contains("650"), "{e}");
    assert_eq!(e.code(), ErrorCode::InvalidArgument);
    // A small wrong file does not say its size either.
    std::fs::write(&big, vec![b'x'; 650]).unwrap();
    let e = Key::from_file(&big).unwrap_err();
    assert!(!e.to_string().contains("650"), "{e}");
    assert!(e.to_string().contains("64 hex digits"), "{e}");
}

#[test]
fn a_confined_tenant_reaches_only_its_roots() {
    let (dir, data) = data_dir();
    let extra = dir.path().join("granted");
    std::fs::create_dir_all(&extra).unwrap();
    std::fs::write(extra.join("x.key"), key_hex()).unwrap();
    let security = confined(&[("a", &extra)]);
    let a = Access::of(&security, &data, "a");
    assert!(a.confined());
    // Its own key and its granted directory.
    assert!(a.key("key-file", &data.join("repo-keys/a/k.key")).is_ok());
    assert!(a.key("key-file", &extra.join("x.key")).is_ok());
    assert!(a.check_path(&data.join("repos/a/new"), "dir").is_ok());
    assert!(a.check_path(&extra.join("backups"), "dir").is_ok());
    // Another tenant's key and directory, anything else on the host.
    let refused = |p: &Path| {
        let e = a.key("key-file", p).unwrap_err();
        assert_eq!(e.code(), ErrorCode::PermissionDenied, "{e}");
        e.to_string()
    };
    let other = refused(&data.join("repo-keys/b/k.key"));
    assert!(other.contains("outside the directories granted"), "{other}");
    // The same words whether the file exists or not: nothing is learnt.
    let shadow = refused(Path::new("/etc/shadow"));
    let missing = refused(Path::new("/etc/no-such-file-here"));
    assert_eq!(
        shadow.replace("/etc/shadow", "P"),
        missing.replace("/etc/no-such-file-here", "P")
    );
    assert!(a.check_path(&data.join("repos/b/x"), "dir").is_err());
    assert!(a.check_path(Path::new("/var/tmp"), "dir").is_err());
    // `..` and relative paths.
    let e = a
        .key("key-file", &data.join("repo-keys/a/../b/k.key"))
        .unwrap_err();
    assert!(e.to_string().contains(".."), "{e}");
    assert!(a.check_path(Path::new("relative"), "dir").is_err());
    // A link inside a root pointing out of it: neither a directory nor a
    // key file is reached through it.
    let out = data.join("repos/a/out");
    std::os::unix::fs::symlink(data.join("repo-keys/b"), &out).unwrap();
    assert!(a.key("key-file", &out.join("k.key")).is_err());
    assert!(a.check_path(&out.join("repo"), "dir").is_err());
    let url = RepoUrl::parse(&format!("file://{}", out.display())).unwrap();
    assert!(a.open_store(&url).is_err());
    // Tenant b has no grant for `extra`.
    let b = Access::of(&security, &data, "b");
    assert!(b.key("key-file", &extra.join("x.key")).is_err());
}

#[test]
fn an_open_deployment_keeps_only_the_data_dirs_walls() {
    let (dir, data) = data_dir();
    let a = Access::of(&Grants::default(), &data, "a");
    assert!(!a.confined());
    let ok = |p: &Path| a.check_path(p, "key file").is_ok();
    assert!(ok(&data.join("repos/a/local")));
    assert!(ok(&data.join("repo-keys/a/local.key")));
    assert!(ok(&dir.path().join("elsewhere/backups")));
    assert!(!ok(&data.join("repos/b/local")));
    assert!(!ok(&data.join("repo-keys/b/k.key")));
    assert!(!ok(&data.join("journal.redb")));
    assert!(!ok(&data.join("repos/a/../b/local")));
    assert!(!ok(Path::new("relative/key")));
    // A link from outside into another tenant's keys is followed.
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(data.join("repo-keys/b"), &link).unwrap();
    assert!(!ok(&link.join("k.key")));
    assert!(a.key("key-file", &link.join("k.key")).is_err());
}

fn s3(url: &str) -> S3Location {
    match RepoUrl::parse(url).unwrap() {
        RepoUrl::S3(s3) => s3,
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_s3_allowlist_compares_endpoint_bucket_and_prefix() {
    let allowed = s3("s3://backups/tenants?endpoint=http://s3.internal:9000");
    let under = |url: &str| s3(url).is_under(&allowed);
    assert!(under(
        "s3://backups/tenants?endpoint=http://s3.internal:9000"
    ));
    assert!(under(
        "s3://backups/tenants/acme?endpoint=http://S3.Internal:9000/"
    ));
    assert!(!under(
        "s3://backups/tenantsx?endpoint=http://s3.internal:9000"
    ));
    assert!(!under("s3://backups?endpoint=http://s3.internal:9000"));
    assert!(!under(
        "s3://backups/tenants?endpoint=http://s3.internal:9001"
    ));
    assert!(!under(
        "s3://backups/tenants?endpoint=https://s3.internal:9000"
    ));
    assert!(!under(
        "s3://backups/tenants?endpoint=http://s3.internal.evil:9000"
    ));
    assert!(!under("s3://backups/tenants?endpoint=http://evil"));
    assert!(!under("s3://backups/tenants"));
    assert!(!under(
        "s3://other/tenants?endpoint=http://s3.internal:9000"
    ));
    // The raw-prefix tricks do not even parse.
    for bad in [
        "s3://backups/tenants?endpoint=http://s3.internal:9000@evil",
        "s3://backups/tenants?endpoint=http://s3.internal:9000/../x",
        "s3://backups/tenants?endpoint=http://s3.internal:9000%2F@evil",
        "s3://backups/tenants?endpoint=http://s3.internal:9000?x=1",
        "s3://backups?region=x.evil.com%23",
    ] {
        assert!(RepoUrl::parse(bad).is_err(), "{bad}");
    }
    // AWS allows only AWS.
    let aws = s3("s3://backups");
    assert!(s3("s3://backups/a").is_under(&aws));
    assert!(!s3("s3://backups/a?endpoint=http://127.0.0.1:1").is_under(&aws));
}

#[test]
fn the_servers_s3_credentials_serve_only_granted_locations() {
    let (_dir, data) = data_dir();
    let mut security = confined(&[]);
    security.s3_allow = vec!["s3://backups?endpoint=http://127.0.0.1:9000".into()];
    security.s3_server_credentials.insert(
        "a".into(),
        vec!["s3://backups/a?endpoint=http://127.0.0.1:9000".into()],
    );
    let a = Access::of(&security, &data, "a");
    let b = Access::of(&security, &data, "b");
    let granted = s3("s3://backups/a/x?endpoint=http://127.0.0.1:9000");
    let allowed = s3("s3://backups/b?endpoint=http://127.0.0.1:9000");
    let elsewhere = s3("s3://backups/b?endpoint=http://127.0.0.1:9999");
    assert!(a.check_s3(&granted).unwrap());
    assert!(!a.check_s3(&allowed).unwrap());
    assert!(!b.check_s3(&granted).unwrap());
    let e = a.check_s3(&elsewhere).unwrap_err();
    assert_eq!(e.code(), ErrorCode::PermissionDenied);
    assert!(e.to_string().contains("not permitted"), "{e}");
    // Allowed, but with no credentials of its own: refused, not lent.
    let e = b
        .open_store(&RepoUrl::S3(allowed))
        .err()
        .expect("no credentials lent");
    assert!(e.to_string().contains("access_key"), "{e}");
    // The operator of an open deployment reaches anything.
    let open = Access::of(&Grants::default(), &data, "a");
    assert!(open.check_s3(&elsewhere).unwrap());
}

#[test]
fn a_file_repo_sweeps_only_a_tmp_cairn_made() {
    let dir = tempfile::tempdir().unwrap();
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    let plant = |path: &Path| {
        let f = std::fs::File::create(path).unwrap();
        f.set_modified(old).unwrap();
    };
    // Someone else's `.tmp`, with old files named like Cairn's.
    let foreign = dir.path().join("foreign");
    std::fs::create_dir_all(foreign.join(".tmp")).unwrap();
    let theirs = foreign.join(".tmp").join("0123456789abcdef01234567");
    plant(&theirs);
    FileStore::open(&foreign).unwrap();
    assert!(theirs.exists(), "a file in a foreign .tmp was deleted");
    // Cairn's own `.tmp`: stale temp files go, anything else stays.
    let ours = dir.path().join("ours");
    FileStore::open(&ours).unwrap();
    let stale = ours.join(".tmp").join("0123456789abcdef01234567");
    let other = ours.join(".tmp").join("notes.txt");
    plant(&stale);
    plant(&other);
    FileStore::open(&ours).unwrap();
    assert!(!stale.exists());
    assert!(other.exists());
    // A `.tmp` that is a link is refused.
    let linked = dir.path().join("linked");
    std::fs::create_dir_all(&linked).unwrap();
    std::os::unix::fs::symlink(&foreign, linked.join(".tmp")).unwrap();
    assert!(FileStore::open(&linked).is_err());
}

#[test]
fn a_file_repo_reads_no_link_and_no_more_than_asked() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, b"not a repo object").unwrap();
    let store = FileStore::open(dir.path().join("repo")).unwrap();
    std::fs::create_dir_all(dir.path().join("repo/manifests")).unwrap();
    std::os::unix::fs::symlink(&secret, dir.path().join("repo/manifests/x")).unwrap();
    assert!(store.get("manifests/x", 1 << 20).is_err());
    assert!(store.get_range("manifests/x", 0, 4).is_err());
    assert!(store.list_page("manifests/", None, 10).unwrap().is_empty());
    // A linked directory is not walked into either.
    std::os::unix::fs::symlink(dir.path(), dir.path().join("repo/packs")).unwrap();
    assert!(store.get("packs/secret", 1 << 20).is_err());
    // Oversized objects are refused before they are read.
    store.put("config", Bytes::from(vec![b' '; 1000])).unwrap();
    let e = store.get("config", 999).unwrap_err();
    assert!(matches!(e, store::Error::Oversized { .. }), "{e}");
    let mem = MemStore::new();
    mem.put("config", Bytes::from(vec![b' '; 1000])).unwrap();
    assert!(matches!(
        mem.get("config", 999),
        Err(store::Error::Oversized { .. })
    ));
}

// ---- bounds against a hostile repository ----

fn small() -> InitOptions {
    InitOptions {
        chunk_bytes: 64 << 10,
        pack_bytes: 256 << 10,
        zstd_level: 1,
        kdf_m_cost_kib: 64,
        kdf_t_cost: 1,
    }
}

fn edit_config(store: &MemStore, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut config: serde_json::Value =
        serde_json::from_slice(&store.get(CONFIG_KEY, 1 << 20).unwrap()).unwrap();
    edit(&mut config);
    store
        .put(
            CONFIG_KEY,
            Bytes::from(serde_json::to_vec(&config).unwrap()),
        )
        .unwrap();
}

#[test]
fn a_config_asking_for_a_huge_kdf_is_refused_before_allocating() {
    let store = Arc::new(MemStore::new());
    let key = Key::passphrase("pw");
    Repo::init(store.clone(), &key, small()).unwrap();
    for (field, value) in [
        ("m_cost_kib", 4u64 << 20),
        ("m_cost_kib", (256 << 10) + 1),
        ("t_cost", 1000),
        ("p_cost", 64),
    ] {
        let store = Arc::new(MemStore::new());
        Repo::init(store.clone(), &key, small()).unwrap();
        edit_config(&store, |c| c["kdf"][field] = value.into());
        let e = Repo::open(store, &key).err().expect("refused");
        assert_eq!(e.code(), ErrorCode::Corrupted, "{field}: {e}");
        assert!(e.to_string().contains("kdf"), "{e}");
    }
    // A config too large to be one is refused unread.
    let store = Arc::new(MemStore::new());
    store
        .put(
            CONFIG_KEY,
            Bytes::from(vec![b' '; MAX_CONFIG_BYTES as usize + 1]),
        )
        .unwrap();
    let e = Repo::open(store, &key).err().expect("refused");
    assert_eq!(e.code(), ErrorCode::Corrupted, "{e}");
}

/// A zstd frame that declares (and holds) `n` zero bytes, built without
/// holding them.
fn zeros_frame(n: u64, declare: bool) -> Vec<u8> {
    let mut encoder = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    encoder.include_contentsize(declare).unwrap();
    if declare {
        encoder.set_pledged_src_size(Some(n)).unwrap();
    }
    let block = vec![0u8; 1 << 20];
    let mut left = n;
    while left > 0 {
        let take = left.min(block.len() as u64) as usize;
        encoder.write_all(&block[..take]).unwrap();
        left -= take as u64;
    }
    encoder.finish().unwrap()
}

fn put_manifest(repo: &Repo, store: &MemStore, id: &str, packed: &[u8]) {
    let aad = [b"cairn manifest ".as_slice(), id.as_bytes()].concat();
    let sealed = repo.keys().seal(packed, &aad);
    store
        .put(&format!("{MANIFESTS}{id}"), Bytes::from(sealed))
        .unwrap();
}

#[test]
fn a_manifest_bomb_is_corrupted_not_an_allocation() {
    let store = Arc::new(MemStore::new());
    let key = Key::from_bytes([7; 32]);
    let repo = Repo::init(store.clone(), &key, small()).unwrap();
    let id = "0123456789abcdef0123456789abcdef";
    // Declares more than a manifest may hold.
    put_manifest(
        &repo,
        &store,
        id,
        &zeros_frame(MAX_MANIFEST_BYTES + 1, true),
    );
    let e = repo.manifest(id).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Corrupted, "{e}");
    // Declares nothing.
    put_manifest(&repo, &store, id, &zeros_frame(1 << 20, false));
    let e = repo.manifest(id).unwrap_err();
    assert!(e.to_string().contains("declare"), "{e}");
    // Declares little, holds more (a second frame): the decoder stops at
    // the declared size.
    let mut lying = zeros_frame(1000, true);
    lying.extend_from_slice(&zeros_frame(8 << 20, true));
    put_manifest(&repo, &store, id, &lying);
    let e = repo.manifest(id).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Corrupted, "{e}");
    // `repo ls` skips it; `check` names it.
    assert!(repo.list().unwrap().is_empty());
    let report = repo.check().unwrap();
    assert_eq!(report.problems.len(), 1, "{report:?}");
}

/// A pack whose index (sealed with the repo's key) holds `entries`, with
/// `blob_bytes` of blobs before it.
fn put_pack(repo: &Repo, store: &MemStore, entries: &[IndexEntry], blob_bytes: usize) -> String {
    let mut bytes = b"CRNPACK1".to_vec();
    bytes.resize(8 + blob_bytes, 0);
    let index = postcard::to_allocvec(entries).unwrap();
    let sealed = repo.keys().seal(&index, b"cairn pack index");
    let offset = bytes.len() as u64;
    bytes.extend_from_slice(&sealed);
    bytes.extend_from_slice(&offset.to_le_bytes());
    bytes.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
    bytes.extend_from_slice(b"CRNPKEND");
    let key = format!("{PACKS}{}", blake3::hash(&bytes).to_hex());
    store.put(&key, Bytes::from(bytes)).unwrap();
    key
}

#[test]
fn a_pack_index_out_of_bounds_is_corrupted() {
    let store = Arc::new(MemStore::new());
    let key = Key::from_bytes([7; 32]);
    let repo = Repo::init(store.clone(), &key, small()).unwrap();
    let entry = |len: u32, raw_len: u32| IndexEntry {
        id: [1; 32],
        offset: 8,
        len,
        raw_len,
    };
    // A chunk claiming 4 GiB of plaintext, or a blob larger than a chunk.
    let huge_raw = put_pack(&repo, &store, &[entry(100, u32::MAX)], 100);
    let index = repo.chunk_index().unwrap();
    assert_eq!(index.bad_packs.len(), 1);
    assert_eq!(index.bad_packs[0].0, huge_raw);
    store.delete(&huge_raw).unwrap();
    put_pack(&repo, &store, &[entry(200 << 10, 100)], 200 << 10);
    assert_eq!(repo.chunk_index().unwrap().bad_packs.len(), 1);
    // A trailer claiming a 4 GiB index, in a pack that says so.
    let mut bytes = b"CRNPACK1".to_vec();
    bytes.extend_from_slice(&8u64.to_le_bytes());
    bytes.extend_from_slice(&u32::MAX.to_le_bytes());
    bytes.extend_from_slice(b"CRNPKEND");
    let e = format::parse_trailer("packs/x", 8 + u32::MAX as u64 + 20, &bytes).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Corrupted, "{e}");
    let e = format::parse_trailer("packs/x", MAX_INDEX_BYTES + 29, &{
        let mut t = b"CRNPACK1".to_vec();
        t.extend_from_slice(&8u64.to_le_bytes());
        t.extend_from_slice(&((MAX_INDEX_BYTES + 1) as u32).to_le_bytes());
        t.extend_from_slice(b"CRNPKEND");
        t
    })
    .unwrap_err();
    assert!(e.to_string().contains("larger than any index"), "{e}");
    // A chunk entry past the chunk size, opened directly.
    let keys = repo.keys();
    let sealed = keys.seal(&[1, 0x28, 0xb5, 0x2f, 0xfd], &[1; 32]);
    let e = format::open_chunk(keys, "packs/x", 8, &entry(0, u32::MAX), &sealed).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Corrupted, "{e}");
}

#[test]
fn a_manifest_with_a_foreign_chunk_size_is_corrupted() {
    let store = Arc::new(MemStore::new());
    let key = Key::from_bytes([7; 32]);
    let repo = Repo::init(store.clone(), &key, small()).unwrap();
    let manifest = Manifest {
        version: FORMAT_VERSION,
        app: "a".into(),
        snapshot: "s".into(),
        created_ms: 0,
        parent: None,
        meta: serde_json::json!({}),
        volumes: vec![VolumeEntry {
            name: "v".into(),
            snapshot: "v@s".into(),
            snapshot_created_ms: 0,
            size: 1 << 62,
            chunk_bytes: 1 << 62,
            chunks: vec![ChunkRef::Hole],
        }],
        added_bytes: 0,
    };
    let (id, sealed) = manifest.seal(repo.keys()).unwrap();
    store
        .put(&format!("{MANIFESTS}{id}"), Bytes::from(sealed))
        .unwrap();
    let e = repo.manifest(&id).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Corrupted, "{e}");
    assert!(e.to_string().contains("chunk size"), "{e}");
}
