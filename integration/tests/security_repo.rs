//! Tenancy and hostile repositories, end to end (issue 13, findings 2, 4
//! and 8): a real nats-server with users `cairn` (the server), `acme` and
//! `evil`, the last two confined to their tenant as the README shows, and
//! `cairn up` driven by the CLI as each tenant.
//!
//! - Confinement: evil cannot register acme's backup directory, acme's key
//!   file or any path outside its roots, and learns nothing about other
//!   files from the error; a FIFO as a key file does not hang the server;
//!   an `s3://` endpoint that is not allowlisted is refused, and the
//!   server's own AWS credentials (in its environment) are never sent; a
//!   remote's error body and headers are not echoed back.
//! - Hostile repositories (the tenant holds the repository and its key, so
//!   it can seal anything): a `config` asking for a 4 GiB KDF, a 260 KB
//!   manifest that decompresses to 8 GiB, pack indexes claiming 4 GiB, a
//!   fake S3 server announcing an 8 GiB body or answering a range with more
//!   than asked. Each is a clear error, the server runs under `prlimit
//!   --as` (1 GiB of address space, so any of those allocations would kill
//!   it) and keeps serving after each.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_actors::repo::{self, FileStore, InitOptions, Key, ObjectStore, Repo, RepoUrl};
use cairn_integration::{NatsProcess, cairn, cairn_bin};

const SERVER_AWS_KEY: &str = "AKIASERVERSOWNKEY";
const SERVER_AWS_SECRET: &str = "server-secret-never-lent";
/// The address space `cairn up` gets in the hostile-repository test.
const ADDRESS_SPACE: u64 = 1 << 30;

fn nats_config() -> String {
    let tenant = |t: &str| {
        format!(
            r#"{{ user: {t}, password: {t}-pw, permissions: {{ publish: ["cairn.v1.{t}.>"], subscribe: ["_INBOX.>", "cairn.v1.{t}.evt.>"] }} }}"#
        )
    };
    format!(
        "authorization {{ users = [\n {{ user: cairn, password: cairn-pw }}\n {}\n {}\n] }}",
        tenant("acme"),
        tenant("evil")
    )
}

/// `cairn up` as a child (optionally under `prlimit --as`), authenticated
/// as the `cairn` user, and the CLI as each tenant.
struct Server {
    url: String,
    data: PathBuf,
    child: Child,
}

impl Server {
    fn start(
        dir: &Path,
        nats: &NatsProcess,
        up_args: &[OsString],
        limit_as: Option<u64>,
    ) -> Server {
        let data = dir.join("data");
        std::fs::create_dir_all(&data).unwrap();
        let log = std::fs::File::create(dir.join("cairn-up.log")).unwrap();
        let mut command = match limit_as {
            Some(bytes) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--as={bytes}")).arg("--").arg(cairn_bin());
                c
            }
            None => Command::new(cairn_bin()),
        };
        let child = command
            .args([
                "--nats",
                &nats.url(),
                "--nats-user",
                "cairn",
                "--nats-password",
                "cairn-pw",
            ])
            .args(["up", "--data-dir"])
            .arg(&data)
            .arg("--nbd")
            .arg(format!("unix:{}", dir.join("nbd.sock").display()))
            .args(up_args)
            // What a careless deployment has: the server's own S3 keys.
            .env("AWS_ACCESS_KEY_ID", SERVER_AWS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SERVER_AWS_SECRET)
            .env("MALLOC_ARENA_MAX", "2")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cairn up starts");
        let mut server = Server {
            url: nats.url(),
            data,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !server.serving() {
            assert!(
                server.child.try_wait().unwrap().is_none(),
                "cairn up exited: {}",
                server.log(dir)
            );
            assert!(Instant::now() < deadline, "cairn up not ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    fn log(&self, dir: &Path) -> String {
        std::fs::read_to_string(dir.join("cairn-up.log")).unwrap_or_default()
    }

    /// Runs the CLI as `tenant` (its own NATS user).
    fn cli(&self, tenant: &str, args: &[&str]) -> Output {
        let password = format!("{tenant}-pw");
        let mut all = vec![
            "--nats",
            &self.url,
            "--nats-user",
            tenant,
            "--nats-password",
            &password,
            "--tenant",
            tenant,
        ];
        all.extend_from_slice(args);
        cairn(all)
    }

    fn ok(&self, tenant: &str, args: &[&str]) -> String {
        let out = self.cli(tenant, args);
        assert!(
            out.status.success(),
            "{tenant}: cairn {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The command fails; its stderr.
    fn refused(&self, tenant: &str, args: &[&str]) -> String {
        let out = self.cli(tenant, args);
        assert!(!out.status.success(), "{tenant}: cairn {args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// The process is alive and answers every tenant.
    fn serving(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
            && ["acme", "evil"]
                .iter()
                .all(|t| self.cli(t, &["repo", "list"]).status.success())
    }

    fn assert_serving(&mut self, after: &str) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "cairn up died after {after}"
        );
        assert!(self.serving(), "cairn up stopped answering after {after}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a fake S3 server answers and what it saw.
#[derive(Clone)]
enum Answer {
    /// A status with a body and a header that must not be echoed.
    Refuse(u16),
    /// `Content-Length: 8 GiB`, then zeros until the client hangs up.
    Endless,
    /// Every object from a map; a ranged GET gets the whole object.
    Objects(Arc<BTreeMap<String, Vec<u8>>>),
}

const ECHO: &str = "ECHO-ME-IF-YOU-DARE";

/// A tiny HTTP server on a loopback port answering like S3 would not.
struct FakeS3 {
    port: u16,
    /// Request heads seen (request line and headers).
    seen: Arc<Mutex<Vec<String>>>,
}

impl FakeS3 {
    fn start(answer: Answer) -> FakeS3 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(vec![]));
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (answer, log) = (answer.clone(), log.clone());
                std::thread::spawn(move || serve(stream, &answer, &log));
            }
        });
        FakeS3 { port, seen }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn requests(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(stream: TcpStream, answer: &Answer, log: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut head = String::new();
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        log.lock().unwrap().push(head.clone());
        let mut request_line = head.lines().next().unwrap_or("").split(' ');
        let method = request_line.next().unwrap_or("").to_owned();
        let path = request_line.next().unwrap_or("").to_owned();
        let sent = match answer {
            Answer::Refuse(status) => {
                let body = format!("<Error><Code>{ECHO}</Code><Message>{ECHO}</Message></Error>");
                write!(
                    out,
                    "HTTP/1.1 {status} Nope\r\nx-amz-request-id: {ECHO}\r\nx-echo: {ECHO}\r\ncontent-type: application/xml\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                )
            }
            Answer::Endless => {
                if method == "HEAD" {
                    write!(out, "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n")
                } else {
                    let _ = write!(
                        out,
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                        8u64 << 30
                    );
                    let zeros = vec![0u8; 1 << 20];
                    while out.write_all(&zeros).is_ok() {}
                    return;
                }
            }
            Answer::Objects(objects) => {
                let key = path.split('?').next().unwrap_or("");
                let key = key
                    .trim_start_matches('/')
                    .split_once('/')
                    .map_or("", |(_bucket, key)| key);
                match objects.get(key) {
                    Some(object) if method == "HEAD" => write!(
                        out,
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                        object.len()
                    ),
                    Some(object) => {
                        // A range is answered with the whole object.
                        let status = if head.to_ascii_lowercase().contains("\nrange:") {
                            "206 Partial Content"
                        } else {
                            "200 OK"
                        };
                        write!(
                            out,
                            "HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n",
                            object.len()
                        )
                        .and_then(|()| out.write_all(object))
                    }
                    None => write!(out, "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"),
                }
            }
        };
        if sent.is_err() || out.flush().is_err() {
            return;
        }
    }
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a C string path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

#[test]
fn tenants_are_confined_to_their_repositories_keys_and_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsProcess::start(dir.path(), &nats_config());
    let fake = FakeS3::start(Answer::Refuse(403));
    let evil_root = dir.path().join("evil-root");
    std::fs::create_dir_all(&evil_root).unwrap();
    let allowed = format!("s3://backups/tenants?endpoint={}", fake.endpoint());
    let mut server = Server::start(
        dir.path(),
        &nats,
        &os(&[
            "--repo-root",
            &format!("evil={}", evil_root.display()),
            "--s3-allow",
            &allowed,
        ]),
        None,
    );
    let data = server.data.clone();

    // acme backs up into its own part of the data dir, with a new key.
    server.ok("acme", &["repo", "add", "local"]);
    let acme_dir = data.join("repos/acme/local");
    let acme_key = data.join("repo-keys/acme/local.key");
    assert!(acme_dir.join("config").exists() && acme_key.exists());

    // evil names acme's directory and key: refused, nothing registered.
    let stolen = format!("file://{}", acme_dir.display());
    let e = server.refused(
        "evil",
        &[
            "repo",
            "add",
            "stolen",
            &stolen,
            "--key-file",
            acme_key.to_str().unwrap(),
        ],
    );
    assert!(
        e.contains("not permitted") && e.contains("outside the directories granted"),
        "{e}"
    );
    // Its own directory with acme's key, or acme's directory with no key.
    let own = format!("file://{}", evil_root.join("mine").display());
    let e = server.refused(
        "evil",
        &[
            "repo",
            "add",
            "mine",
            &own,
            "--key-file",
            acme_key.to_str().unwrap(),
        ],
    );
    assert!(e.contains("not permitted"), "{e}");
    let e = server.refused("evil", &["repo", "add", "stolen", &stolen]);
    assert!(e.contains("not permitted"), "{e}");
    // Anywhere else on the host, and `..` out of its root.
    let elsewhere = dir.path().join("elsewhere");
    let e = server.refused(
        "evil",
        &[
            "repo",
            "add",
            "x",
            &format!("file://{}", elsewhere.display()),
        ],
    );
    assert!(e.contains("not permitted"), "{e}");
    assert!(!elsewhere.exists(), "a refused directory was created");
    let dotdot = format!("file://{}/../elsewhere", evil_root.display());
    assert!(
        server
            .refused("evil", &["repo", "add", "x", &dotdot])
            .contains("..")
    );
    // No information about files outside its roots: /etc/shadow and a
    // file that does not exist give the same words, no size.
    let key_error = |path: &str| {
        server
            .refused("evil", &["repo", "add", "mine", &own, "--key-file", path])
            .replace(path, "PATH")
    };
    let shadow = key_error("/etc/shadow");
    assert_eq!(shadow, key_error("/etc/no-such-file-at-all"));
    assert!(
        !shadow.contains("bytes") && !shadow.contains("found"),
        "{shadow}"
    );
    assert!(server.ok("evil", &["repo", "list"]).lines().count() <= 1);
    server.assert_serving("refused paths");

    // A FIFO as a key file inside evil's own root: refused at once; acme
    // is served meanwhile and after.
    let fifo = evil_root.join("fifo.key");
    mkfifo(&fifo);
    let e = server.refused(
        "evil",
        &[
            "repo",
            "add",
            "mine",
            &own,
            "--key-file",
            fifo.to_str().unwrap(),
        ],
    );
    assert!(e.contains("not a regular file"), "{e}");
    server.ok("acme", &["repo", "ls", "local"]);
    server.assert_serving("a FIFO key file");

    // S3: an endpoint or bucket not allowlisted is refused before any
    // request; an allowlisted one without the tenant's own credentials
    // does not get the server's.
    let not_allowed = [
        format!(
            "s3://backups/tenants?endpoint=http://127.0.0.1:{}",
            fake.port + 1
        ),
        format!("s3://other/tenants?endpoint={}", fake.endpoint()),
        format!("s3://backups/tenantsx?endpoint={}", fake.endpoint()),
        "s3://backups/tenants".to_owned(),
    ];
    for url in &not_allowed {
        let e = server.refused("evil", &["repo", "add", "far", url]);
        assert!(e.contains("not permitted"), "{url}: {e}");
    }
    let e = server.refused(
        "evil",
        &[
            "repo",
            "add",
            "far",
            &format!("s3://backups/tenants/evil?endpoint={}", fake.endpoint()),
        ],
    );
    assert!(e.contains("access_key"), "{e}");
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());
    // With its own credentials the request goes out, signed with them; the
    // remote's words and headers do not come back.
    let own_s3 = format!(
        "s3://backups/tenants/evil?endpoint={}&access_key=EVILKEY&secret_key=evil-secret&max_attempts=1",
        fake.endpoint()
    );
    let e = server.refused("evil", &["repo", "add", "far", &own_s3]);
    assert!(!e.contains(ECHO), "{e}");
    assert!(e.contains("403"), "{e}");
    let seen = fake.requests();
    assert!(!seen.is_empty());
    assert!(
        seen.iter()
            .all(|h| h.contains("EVILKEY") && !h.contains(SERVER_AWS_KEY)),
        "{seen:?}"
    );
    server.assert_serving("S3 refusals");
}

/// Writes a repository the way a hostile tenant would: with the library
/// and the repository's own key, then edited.
fn hostile_repo(dir: &Path, key: &Key) -> (Arc<FileStore>, Repo) {
    let store = Arc::new(FileStore::open(dir).unwrap());
    let repo = Repo::init(
        store.clone(),
        key,
        InitOptions {
            kdf_m_cost_kib: 64,
            kdf_t_cost: 1,
            ..InitOptions::default()
        },
    )
    .unwrap();
    (store, repo)
}

/// A zstd frame of RLE blocks: `n` zero bytes (declared) in 4 bytes per
/// 128 KiB.
fn rle_bomb(n: u64) -> Vec<u8> {
    let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd, 0xc0, 0x38];
    frame.extend_from_slice(&n.to_le_bytes());
    let block = 128u64 << 10;
    let mut left = n;
    while left > 0 {
        let size = left.min(block);
        left -= size;
        let header = ((size as u32) << 3) | (1 << 1) | u32::from(left == 0);
        frame.extend_from_slice(&header.to_le_bytes()[..3]);
        frame.push(0);
    }
    frame
}

/// A pack of `blob` then an index sealed with the repo's key.
fn pack_bytes(repo: &Repo, blob: &[u8], entries: &[repo::IndexEntry]) -> Vec<u8> {
    let mut bytes = b"CRNPACK1".to_vec();
    bytes.extend_from_slice(blob);
    let index = postcard_entries(entries);
    let sealed = repo.keys().seal(&index, b"cairn pack index");
    let offset = bytes.len() as u64;
    bytes.extend_from_slice(&sealed);
    bytes.extend_from_slice(&offset.to_le_bytes());
    bytes.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
    bytes.extend_from_slice(b"CRNPKEND");
    bytes
}

/// postcard of `Vec<IndexEntry>`: a varint length, then per entry 32 id
/// bytes and three varint u32s.
fn postcard_entries(entries: &[repo::IndexEntry]) -> Vec<u8> {
    fn varint(out: &mut Vec<u8>, mut v: u64) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let mut out = vec![];
    varint(&mut out, entries.len() as u64);
    for e in entries {
        out.extend_from_slice(&e.id);
        varint(&mut out, e.offset.into());
        varint(&mut out, e.len.into());
        varint(&mut out, e.raw_len.into());
    }
    out
}

#[test]
fn a_hostile_repository_gets_clear_errors_and_memory_stays_bounded() {
    if !cairn_integration::have_tool("prlimit") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsProcess::start(dir.path(), &nats_config());
    let endless = FakeS3::start(Answer::Endless);
    let root = dir.path().join("acme-repos");
    std::fs::create_dir_all(&root).unwrap();
    let key_file = root.join("repo.key");
    std::fs::write(&key_file, "5a".repeat(32)).unwrap();
    let key = Key::from_file(&key_file).unwrap();
    let passphrase = root.join("pass");
    std::fs::write(&passphrase, "correct horse\n").unwrap();

    // A config asking for 4 GiB of argon2 memory.
    let (store, _) = hostile_repo(&root.join("kdf"), &Key::passphrase("correct horse"));
    let mut config: serde_json::Value =
        serde_json::from_slice(&store.get("config", 1 << 20).unwrap()).unwrap();
    config["kdf"]["m_cost_kib"] = (4u64 << 20).into();
    store
        .put("config", Bytes::from(serde_json::to_vec(&config).unwrap()))
        .unwrap();
    // A sealed manifest of 260 KB that decompresses to 8 GiB.
    let (store, repo) = hostile_repo(&root.join("bomb"), &key);
    let id = "00112233445566778899aabbccddeeff";
    let aad = format!("cairn manifest {id}");
    let sealed = repo.keys().seal(&rle_bomb(8 << 30), aad.as_bytes());
    assert!(sealed.len() < 300 << 10);
    store
        .put(&format!("manifests/{id}"), Bytes::from(sealed))
        .unwrap();
    // Packs whose index claims a 4 GiB chunk, and whose trailer claims a
    // 4 GiB index (a sparse file of that size).
    let (store, repo) = hostile_repo(&root.join("packs"), &key);
    let chunk_id = [3u8; 32];
    let blob = repo.keys().seal(&[1, 0x28, 0xb5, 0x2f, 0xfd], &chunk_id);
    let entry = repo::IndexEntry {
        id: chunk_id,
        offset: 8,
        len: blob.len() as u32,
        raw_len: u32::MAX,
    };
    let pack = pack_bytes(&repo, &blob, &[entry]);
    store
        .put(
            &format!("packs/{}", blake3::hash(&pack).to_hex()),
            Bytes::from(pack),
        )
        .unwrap();
    let sparse = root.join("packs/packs").join("f".repeat(64));
    {
        let file = std::fs::File::create(&sparse).unwrap();
        let len: u64 = 8 + (u32::MAX as u64 - 64) + 20;
        file.set_len(len).unwrap();
        let mut trailer = 8u64.to_le_bytes().to_vec();
        trailer.extend_from_slice(&(u32::MAX - 64).to_le_bytes());
        trailer.extend_from_slice(b"CRNPKEND");
        use std::os::unix::fs::FileExt;
        file.write_all_at(b"CRNPACK1", 0).unwrap();
        file.write_all_at(&trailer, len - 20).unwrap();
    }

    let mut server = Server::start(
        dir.path(),
        &nats,
        &os(&[
            "--repo-root",
            &format!("acme={}", root.display()),
            "--s3-allow",
            &format!("s3://backups?endpoint={}", endless.endpoint()),
        ]),
        Some(ADDRESS_SPACE),
    );
    let file_url = |name: &str| format!("file://{}", root.join(name).display());
    let key_arg = key_file.to_str().unwrap();

    let e = server.refused(
        "acme",
        &[
            "repo",
            "add",
            "kdf",
            &file_url("kdf"),
            "--passphrase-file",
            passphrase.to_str().unwrap(),
        ],
    );
    assert!(e.contains("corrupted") && e.contains("kdf"), "{e}");
    server.assert_serving("a 4 GiB KDF config");

    server.ok(
        "acme",
        &[
            "repo",
            "add",
            "bomb",
            &file_url("bomb"),
            "--key-file",
            key_arg,
        ],
    );
    // `repo ls` skips the manifest (a warning on the server); `check`
    // names it.
    server.ok("acme", &["repo", "ls", "bomb"]);
    let out = server.cli("acme", &["repo", "check", "bomb"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains(id), "{report}");
    server.assert_serving("a manifest bomb");

    server.ok(
        "acme",
        &[
            "repo",
            "add",
            "packs",
            &file_url("packs"),
            "--key-file",
            key_arg,
        ],
    );
    let out = server.cli("acme", &["repo", "check", "packs"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains(&"f".repeat(64)), "{report}");
    server.ok("acme", &["repo", "prune", "packs", "--keep-last", "1"]);
    server.assert_serving("packs claiming 4 GiB");

    // An S3 server announcing an 8 GiB config.
    let s3_url = format!(
        "s3://backups/acme?endpoint={}&access_key=AK&secret_key=SK&max_attempts=1",
        endless.endpoint()
    );
    let e = server.refused(
        "acme",
        &["repo", "add", "endless", &s3_url, "--key-file", key_arg],
    );
    assert!(e.contains("corrupted") || e.contains("larger than"), "{e}");
    server.assert_serving("an 8 GiB S3 body");
}

#[test]
fn an_s3_store_reads_no_more_than_it_asked_for() {
    let endless = FakeS3::start(Answer::Endless);
    let url = format!(
        "s3://backups/p?endpoint={}&access_key=AK&secret_key=SK&max_attempts=1",
        endless.endpoint()
    );
    let store = RepoUrl::parse(&url).unwrap().open_store().unwrap();
    let e = store.get("config", 64 << 10).unwrap_err();
    assert!(matches!(e, repo::store::Error::Oversized { .. }), "{e}");
    let e = store.get_range("packs/x", 0, 10).unwrap_err();
    assert!(matches!(e, repo::store::Error::Oversized { .. }), "{e}");

    let mut objects = BTreeMap::new();
    objects.insert("p/packs/x".to_owned(), vec![7u8; 1000]);
    let fake = FakeS3::start(Answer::Objects(Arc::new(objects)));
    let url = format!(
        "s3://backups/p?endpoint={}&access_key=AK&secret_key=SK&max_attempts=1",
        fake.endpoint()
    );
    let store = RepoUrl::parse(&url).unwrap().open_store().unwrap();
    assert_eq!(store.get("packs/x", 1000).unwrap().len(), 1000);
    // A range answered with the whole object: more than asked.
    let e = store.get_range("packs/x", 10, 20).unwrap_err();
    assert!(matches!(e, repo::store::Error::Oversized { .. }), "{e}");
    let e = store.get("packs/x", 999).unwrap_err();
    assert!(matches!(e, repo::store::Error::Oversized { .. }), "{e}");
}
