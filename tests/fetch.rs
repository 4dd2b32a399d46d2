//! `fetch dataset` and `fetch model` against HTTP servers started inside the tests on
//! 127.0.0.1: download, verification, unpacking, markers, resumption, and the one-line
//! errors when the network is missing. Nothing here touches the internet.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

use md5::Md5;
use saeclip::fetch::{
    dataset_marker_path, fetch_dataset, Dataset, FetchDatasetOptions, MODEL_MARKER,
};
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------------------
// A small HTTP/1.1 server: one thread per connection, `Connection: close`, every request
// recorded.

#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

type Handler = dyn Fn(&Request, &mut TcpStream, usize) + Send + Sync;

struct Server {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Request>>>,
}

impl Server {
    /// Serve with `handler(request, stream, index of the request)`.
    fn start(handler: impl Fn(&Request, &mut TcpStream, usize) + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let log: Arc<Mutex<Vec<Request>>> = Arc::default();
        let handler: Arc<Handler> = Arc::new(handler);
        let server_log = log.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let log = server_log.clone();
                let handler = handler.clone();
                std::thread::spawn(move || {
                    let Some(request) = read_request(&mut stream) else {
                        return;
                    };
                    let index = {
                        let mut log = log.lock().unwrap();
                        log.push(request.clone());
                        log.len() - 1
                    };
                    handler(&request, &mut stream, index);
                    let _ = stream.flush();
                });
            }
        });
        Server { addr, log }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> Vec<Request> {
        self.log.lock().unwrap().clone()
    }
}

fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    Some(Request {
        method,
        path,
        headers,
    })
}

fn write_head(stream: &mut TcpStream, status: &str, headers: &[(&str, String)]) {
    let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
}

fn not_found(stream: &mut TcpStream) {
    write_head(stream, "404 Not Found", &[("Content-Length", "9".into())]);
    let _ = stream.write_all(b"not found");
}

/// Serve `body`, honouring `Range: bytes=A-` and `bytes=A-B`; with `cut_at`, close the
/// connection after that many body bytes although Content-Length promised more.
fn serve_bytes(
    request: &Request,
    stream: &mut TcpStream,
    body: &[u8],
    extra: &[(&str, String)],
    cut_at: Option<usize>,
) {
    let total = body.len();
    let range = request
        .header("Range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .map(|(a, b)| {
            let start: usize = a.parse().unwrap();
            let end = if b.is_empty() {
                total.saturating_sub(1)
            } else {
                b.parse::<usize>().unwrap().min(total - 1)
            };
            (start, end)
        });
    let mut headers: Vec<(&str, String)> = extra.to_vec();
    let (status, start, end) = match range {
        Some((start, _)) if start >= total => {
            headers.push(("Content-Range", format!("bytes */{total}")));
            headers.push(("Content-Length", "0".into()));
            write_head(stream, "416 Range Not Satisfiable", &headers);
            return;
        }
        Some((start, end)) => {
            headers.push(("Content-Range", format!("bytes {start}-{end}/{total}")));
            ("206 Partial Content", start, end)
        }
        None => ("200 OK", 0, total - 1),
    };
    headers.push(("Content-Length", (end + 1 - start).to_string()));
    headers.push(("Content-Type", "application/octet-stream".into()));
    write_head(stream, status, &headers);
    if request.method == "HEAD" {
        return;
    }
    let slice = &body[start..=end];
    let slice = match cut_at {
        Some(n) => &slice[..n.min(slice.len())],
        None => slice,
    };
    let _ = stream.write_all(slice);
}

/// A port on 127.0.0.1 with nothing listening.
fn dead_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn md5_hex(bytes: &[u8]) -> String {
    format!("{:x}", Md5::digest(bytes))
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

fn entries(dir: &Path) -> BTreeSet<String> {
    match std::fs::read_dir(dir) {
        Ok(list) => list
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------------------
// Datasets

/// Files of a fake CIFAR-10 binary archive: (path inside the archive, content).
fn fake_cifar10_files() -> Vec<(String, Vec<u8>)> {
    let mut state = 0x2545F4914F6CDD1Du64;
    let mut noise = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect()
    };
    let mut files = vec![(
        "cifar-10-batches-bin/batches.meta.txt".to_string(),
        b"airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n".to_vec(),
    )];
    for name in [
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
        "test_batch.bin",
    ] {
        // Two records of 1 label byte + 3072 pixel bytes.
        files.push((format!("cifar-10-batches-bin/{name}"), noise(2 * 3073)));
    }
    files
}

fn fake_cifar10_archive() -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    dir.set_cksum();
    tar.append_data(&mut dir, "cifar-10-batches-bin/", std::io::empty())
        .unwrap();
    for (path, content) in fake_cifar10_files() {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, path, content.as_slice())
            .unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

fn options(out: &Path, base_url: String, md5: String) -> FetchDatasetOptions {
    let mut options = FetchDatasetOptions::new(Dataset::Cifar10, out);
    options.base_url = Some(base_url);
    options.md5_override = Some(md5);
    options.progress = false;
    options
}

/// Serve `archive` at /mirror/cifar-10-binary.tar.gz.
fn archive_server(archive: Vec<u8>, cut_first_at: Option<usize>) -> Server {
    Server::start(move |request, stream, index| {
        if request.path == "/mirror/cifar-10-binary.tar.gz" {
            let cut = if index == 0 { cut_first_at } else { None };
            serve_bytes(request, stream, &archive, &[], cut);
        } else {
            not_found(stream);
        }
    })
}

fn assert_unpacked(out: &Path) {
    for (path, content) in fake_cifar10_files() {
        assert_eq!(
            std::fs::read(out.join(&path)).unwrap(),
            content,
            "{path} differs"
        );
    }
}

#[test]
fn dataset_is_downloaded_verified_unpacked_marked_and_then_skipped() {
    let archive = fake_cifar10_archive();
    let (md5, sha256) = (md5_hex(&archive), sha256_hex(&archive));
    let server = archive_server(archive.clone(), None);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("data");
    let opts = options(&out, format!("{}/mirror/", server.url()), md5.clone());

    let folder = fetch_dataset(&opts).unwrap();
    assert_eq!(folder, out.join("cifar-10-batches-bin"));
    assert_unpacked(&out);
    // Exactly the official folder and the marker: no archive, partial file or staging left.
    assert_eq!(
        entries(&out),
        set(&["cifar-10-batches-bin", ".saeclip-fetch-cifar10.json"])
    );
    let marker: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dataset_marker_path(&out, Dataset::Cifar10)).unwrap(),
    )
    .unwrap();
    assert_eq!(marker["md5"], md5.as_str());
    assert_eq!(marker["sha256"], sha256.as_str());
    assert_eq!(marker["bytes"], archive.len());
    assert_eq!(marker["dataset"], "cifar10");
    assert_eq!(
        marker["url"],
        format!("{}/mirror/cifar-10-binary.tar.gz", server.url())
    );
    let first = server.requests();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].header("Range"), None);

    // A rerun finds the marker and asks nothing of the server.
    assert_eq!(fetch_dataset(&opts).unwrap(), folder);
    assert_eq!(server.requests().len(), 1);

    // The dataset folder alone (marker lost, as after a crash just before writing it) does
    // not count as complete.
    std::fs::remove_file(dataset_marker_path(&out, Dataset::Cifar10)).unwrap();
    fetch_dataset(&opts).unwrap();
    assert_eq!(server.requests().len(), 2);
    assert_unpacked(&out);
}

#[test]
fn interrupted_download_resumes_with_a_range_request() {
    let archive = fake_cifar10_archive();
    let half = archive.len() / 2;
    let server = archive_server(archive.clone(), Some(half));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("data");

    fetch_dataset(&options(
        &out,
        format!("{}/mirror", server.url()),
        md5_hex(&archive),
    ))
    .unwrap();
    assert_unpacked(&out);
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[0].header("Range"), None);
    assert_eq!(
        requests[1].header("Range"),
        Some(format!("bytes={half}-").as_str())
    );
}

#[test]
fn partial_file_of_a_killed_run_is_resumed() {
    let archive = fake_cifar10_archive();
    let server = archive_server(archive.clone(), None);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("data");
    std::fs::create_dir_all(&out).unwrap();
    let have = 1000;
    std::fs::write(out.join("cifar-10-binary.tar.gz.part"), &archive[..have]).unwrap();
    // Also a staging folder a killed unpack left behind: it must not survive.
    std::fs::create_dir_all(out.join(".saeclip-unpack-cifar10-999999/cifar-10-batches-bin"))
        .unwrap();

    fetch_dataset(&options(
        &out,
        format!("{}/mirror", server.url()),
        md5_hex(&archive),
    ))
    .unwrap();
    assert_unpacked(&out);
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].header("Range"),
        Some(format!("bytes={have}-").as_str())
    );
    assert_eq!(
        entries(&out),
        set(&["cifar-10-batches-bin", ".saeclip-fetch-cifar10.json"])
    );
}

#[test]
fn corrupted_archive_is_a_checksum_error_and_leaves_nothing_complete() {
    let archive = fake_cifar10_archive();
    let expected = md5_hex(&archive);
    let mut corrupted = archive.clone();
    let middle = corrupted.len() / 2;
    corrupted[middle] ^= 0xff;
    let found = md5_hex(&corrupted);
    let server = archive_server(corrupted, None);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("data");

    let err = fetch_dataset(&options(
        &out,
        format!("{}/mirror", server.url()),
        expected.clone(),
    ))
    .unwrap_err();
    let message = format!("{err:#}");
    assert!(message.contains("checksum mismatch"), "{message}");
    assert!(
        message.contains(&format!("expected md5 {expected}")),
        "{message}"
    );
    assert!(message.contains(&format!("found {found}")), "{message}");
    assert!(message.contains("cifar-10-binary.tar.gz"), "{message}");
    // No dataset folder, no marker, and no download to resume onto.
    assert!(entries(&out).is_empty(), "{:?}", entries(&out));
}

#[test]
fn archive_without_the_official_folder_is_refused() {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mut header = tar::Header::new_gnu();
    header.set_size(3);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "other/readme.txt", &b"abc"[..])
        .unwrap();
    let archive = tar.into_inner().unwrap().finish().unwrap();
    let server = archive_server(archive.clone(), None);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("data");

    let err = fetch_dataset(&options(
        &out,
        format!("{}/mirror", server.url()),
        md5_hex(&archive),
    ))
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("no top-level folder cifar-10-batches-bin"),
        "{err:#}"
    );
    assert!(!out.join("cifar-10-batches-bin").exists());
    assert!(!dataset_marker_path(&out, Dataset::Cifar10).exists());
    assert!(entries(&out)
        .iter()
        .all(|name| !name.starts_with(".saeclip-unpack")));
}

/// Run the binary; return (success, stdout, stderr).
fn run_saeclip(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    run_saeclip_in(Path::new("."), args, env)
}

/// Run the binary in `cwd`.
fn run_saeclip_in(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut command = common::saeclip();
    command
        .current_dir(cwd)
        .args(args)
        .env_remove("SAECLIP_DATASET_BASE_URL")
        .env_remove("HF_ENDPOINT")
        .env_remove("HF_HOME")
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_TOKEN");
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn assert_one_error_line(stderr: &str) {
    assert_eq!(stderr.lines().count(), 1, "stderr: {stderr}");
    assert!(stderr.starts_with("error: "), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
}

#[test]
fn connection_refused_is_one_clear_error_line() {
    let port = dead_port();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("data");
    let base = format!("http://127.0.0.1:{port}");
    let (ok, stdout, stderr) = run_saeclip(
        &[
            "fetch",
            "dataset",
            "cifar10",
            "--out",
            out.to_str().unwrap(),
            "--base-url",
            &base,
        ],
        &[],
    );
    assert!(!ok);
    assert!(stdout.is_empty(), "{stdout}");
    assert_one_error_line(&stderr);
    assert!(
        stderr.contains(&format!(
            "cannot reach {base}/cifar-10-binary.tar.gz (connection refused)"
        )),
        "{stderr}"
    );
    // What to download, the published checksum, and where to put it.
    assert!(
        stderr.contains("c32a1d4ab5d03f1284b67883e8d87530"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&out.join("cifar-10-batches-bin").display().to_string()),
        "{stderr}"
    );
    assert!(entries(&out).is_empty());

    // Without --out the dataset goes to data/ (relative to the working directory).
    let (ok, _, stderr) = run_saeclip_in(
        dir.path(),
        &["fetch", "dataset", "cifar10", "--base-url", &base],
        &[],
    );
    assert!(!ok);
    assert!(
        stderr.contains(
            &Path::new("data")
                .join("cifar-10-batches-bin")
                .display()
                .to_string()
        ),
        "{stderr}"
    );
}

#[test]
fn http_404_through_the_environment_base_url_is_one_clear_error_line() {
    let server = Server::start(|_, stream, _| not_found(stream));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("data");
    let base = format!("{}/nothing-here", server.url());
    let (ok, _, stderr) = run_saeclip(
        &[
            "fetch",
            "dataset",
            "cifar100",
            "--out",
            out.to_str().unwrap(),
        ],
        &[("SAECLIP_DATASET_BASE_URL", &base)],
    );
    assert!(!ok);
    assert_one_error_line(&stderr);
    assert!(
        stderr.contains(&format!(
            "cannot reach {base}/cifar-100-binary.tar.gz (HTTP 404 Not Found)"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("03b5dce01913d631647c71ecec9e9cb8"),
        "{stderr}"
    );
    assert_eq!(
        server.requests()[0].path,
        "/nothing-here/cifar-100-binary.tar.gz"
    );
    assert!(entries(&out).is_empty());
}

// ---------------------------------------------------------------------------------------
// Models: the hub endpoints hf-hub uses. `GET /{repo}/resolve/{revision}/{file}` answers
// small files directly (etag = git blob id) and redirects LFS files to a CDN URL, with
// `X-Linked-Etag` = the SHA-256 of the content, as huggingface.co does.

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const REPO: &str = "tiny-org/tiny-clip";

fn tiny_config() -> Vec<u8> {
    br#"{"model_type": "clip", "projection_dim": 8}"#.to_vec()
}

/// A valid safetensors file with one F32 tensor `w` of shape [4].
fn tiny_safetensors() -> Vec<u8> {
    let mut header = br#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#.to_vec();
    while !header.len().is_multiple_of(8) {
        header.push(b' ');
    }
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&header);
    for x in [1.0f32, -2.0, 0.5, 4.0] {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    bytes
}

/// A hub serving `config` and `weights`, announcing `announced_sha` for the weights.
fn hub_server(config: Vec<u8>, weights: Vec<u8>, announced_sha: String) -> Server {
    hub_server_with(config, weights, announced_sha, Vec::new())
}

/// The same hub, also serving the small files `extra` (name, content).
fn hub_server_with(
    config: Vec<u8>,
    weights: Vec<u8>,
    announced_sha: String,
    extra: Vec<(&'static str, Vec<u8>)>,
) -> Server {
    let resolve = format!("/{REPO}/resolve/main/");
    let cell: Arc<Mutex<Option<String>>> = Arc::default();
    let base = cell.clone();
    let server = Server::start(move |request, stream, _| {
        let repo_headers = [("X-Repo-Commit", COMMIT.to_string())];
        match request.path.strip_prefix(resolve.as_str()) {
            Some("config.json") => {
                let mut headers = repo_headers.to_vec();
                headers.push((
                    "ETag",
                    "\"4c3b2a1900ffeeddccbbaa998877665544332211\"".into(),
                ));
                serve_bytes(request, stream, &config, &headers, None);
            }
            Some("model.safetensors") => {
                let base = base.lock().unwrap().clone().unwrap();
                let mut headers = repo_headers.to_vec();
                headers.push(("X-Linked-Etag", format!("\"{announced_sha}\"")));
                headers.push(("X-Linked-Size", weights.len().to_string()));
                headers.push(("ETag", "\"pointer-etag\"".into()));
                headers.push(("Location", format!("{base}/cdn/{announced_sha}")));
                headers.push(("Content-Length", "0".into()));
                write_head(stream, "302 Found", &headers);
            }
            _ if request.path.starts_with("/cdn/") => {
                serve_bytes(request, stream, &weights, &[], None)
            }
            Some(name) if extra.iter().any(|(n, _)| *n == name) => {
                let (_, bytes) = extra.iter().find(|(n, _)| *n == name).unwrap();
                let mut headers = repo_headers.to_vec();
                headers.push(("ETag", format!("\"{}\"", &sha256_hex(bytes)[..40])));
                serve_bytes(request, stream, bytes, &headers, None);
            }
            _ => not_found(stream),
        }
    });
    *cell.lock().unwrap() = Some(server.url());
    server
}

#[test]
fn model_files_land_in_out_and_a_rerun_skips() {
    let (config, weights) = (tiny_config(), tiny_safetensors());
    let server = hub_server(config.clone(), weights.clone(), sha256_hex(&weights));
    let dir = tempfile::tempdir().unwrap();
    let hf_home = dir.path().join("hf");
    let out = dir.path().join("model");
    let env = [
        ("HF_ENDPOINT", server.url()),
        ("HF_HOME", hf_home.display().to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let args = ["fetch", "model", REPO, "--out", out.to_str().unwrap()];

    let (ok, stdout, stderr) = run_saeclip(&args, &env);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), out.display().to_string());
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(std::fs::read(out.join("config.json")).unwrap(), config);
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        weights
    );
    assert_eq!(
        entries(&out),
        set(&["config.json", "model.safetensors", MODEL_MARKER])
    );
    let marker: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join(MODEL_MARKER)).unwrap()).unwrap();
    assert_eq!(marker["repo"], REPO);
    assert_eq!(marker["commit"], COMMIT);
    // The files went through the hub cache under HF_HOME.
    let blob = hf_home
        .join("hub/models--tiny-org--tiny-clip/blobs")
        .join(sha256_hex(&weights));
    assert_eq!(std::fs::read(blob).unwrap(), weights);
    let requests = server.requests().len();
    assert!(requests >= 4, "{:?}", server.requests());

    // Rerun: the marker and the files match, the hub is not asked again.
    let (ok, _, stderr) = run_saeclip(&args, &env);
    assert!(ok, "{stderr}");
    assert_eq!(server.requests().len(), requests);

    // A fresh directory is filled from the hub cache, still without asking the hub.
    let out2 = dir.path().join("model2");
    let (ok, _, stderr) = run_saeclip(
        &["fetch", "model", REPO, "--out", out2.to_str().unwrap()],
        &env,
    );
    assert!(ok, "{stderr}");
    assert_eq!(
        std::fs::read(out2.join("model.safetensors")).unwrap(),
        weights
    );
    assert_eq!(server.requests().len(), requests);

    // Without --out: models/<repo name> in the working directory.
    let (ok, stdout, stderr) = run_saeclip_in(dir.path(), &["fetch", "model", REPO], &env);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "models/tiny-clip");
    assert_eq!(
        std::fs::read(dir.path().join("models/tiny-clip/model.safetensors")).unwrap(),
        weights
    );
}

#[test]
fn model_whose_sha256_mismatches_the_etag_is_refused_and_removed_from_the_cache() {
    let (config, weights) = (tiny_config(), tiny_safetensors());
    let announced = sha256_hex(b"the file the hub meant to serve");
    let server = hub_server(config, weights.clone(), announced.clone());
    let dir = tempfile::tempdir().unwrap();
    let hf_home = dir.path().join("hf");
    let out = dir.path().join("model");
    let (ok, stdout, stderr) = run_saeclip(
        &["fetch", "model", REPO, "--out", out.to_str().unwrap()],
        &[
            ("HF_ENDPOINT", &server.url()),
            ("HF_HOME", hf_home.to_str().unwrap()),
        ],
    );
    assert!(!ok);
    assert!(stdout.is_empty(), "{stdout}");
    assert_one_error_line(&stderr);
    assert!(
        stderr.contains(&format!("has sha256 {}", sha256_hex(&weights))),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("the hub says {announced}")),
        "{stderr}"
    );
    // Nothing in --out looks like a model, and the bad blob is gone from the cache.
    assert!(!out.join("model.safetensors").exists());
    assert!(!out.join("config.json").exists());
    assert!(!out.join(MODEL_MARKER).exists());
    let blobs = hf_home.join("hub/models--tiny-org--tiny-clip/blobs");
    assert!(!blobs.join(&announced).exists());
    assert!(!hf_home
        .join("hub/models--tiny-org--tiny-clip/snapshots")
        .join(COMMIT)
        .join("model.safetensors")
        .exists());
}

#[test]
fn model_hub_unreachable_is_one_clear_error_line() {
    let port = dead_port();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model");
    let endpoint = format!("http://127.0.0.1:{port}");
    let (ok, _, stderr) = run_saeclip(
        &["fetch", "model", REPO, "--out", out.to_str().unwrap()],
        &[
            ("HF_ENDPOINT", &endpoint),
            ("HF_HOME", dir.path().join("hf").to_str().unwrap()),
        ],
    );
    assert!(!ok);
    assert_one_error_line(&stderr);
    assert!(
        stderr.contains(&format!(
            "cannot reach {endpoint}/{REPO}/resolve/main/model.safetensors (connection refused)"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("config.json and model.safetensors"),
        "{stderr}"
    );
    assert!(stderr.contains(&out.display().to_string()), "{stderr}");
    assert!(entries(&out).is_empty());
}

#[test]
fn preprocessor_config_is_fetched_when_the_repository_has_one() {
    let config = br#"{"model_type": "dinov2", "hidden_size": 8}"#.to_vec();
    let prep =
        br#"{"size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224}}"#.to_vec();
    let weights = tiny_safetensors();
    let server = hub_server_with(
        config.clone(),
        weights.clone(),
        sha256_hex(&weights),
        vec![("preprocessor_config.json", prep.clone())],
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model");
    let hf_home = dir.path().join("hf");
    let (ok, _, stderr) = run_saeclip(
        &["fetch", "model", REPO, "--out", out.to_str().unwrap()],
        &[
            ("HF_ENDPOINT", &server.url()),
            ("HF_HOME", hf_home.to_str().unwrap()),
        ],
    );
    assert!(ok, "{stderr}");
    assert_eq!(
        entries(&out),
        set(&[
            "config.json",
            "model.safetensors",
            "preprocessor_config.json",
            MODEL_MARKER
        ])
    );
    assert_eq!(
        std::fs::read(out.join("preprocessor_config.json")).unwrap(),
        prep
    );
    let marker: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join(MODEL_MARKER)).unwrap()).unwrap();
    let names: Vec<&str> = marker["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"preprocessor_config.json"), "{names:?}");
    // A repository without one (the plain hub above answers 404) remembers that in the
    // cache: a second directory is filled without asking the hub again.
    let server = hub_server(tiny_config(), weights.clone(), sha256_hex(&weights));
    let env = [
        ("HF_ENDPOINT", server.url()),
        ("HF_HOME", dir.path().join("hf2").display().to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a = dir.path().join("a");
    let (ok, _, stderr) = run_saeclip(
        &["fetch", "model", REPO, "--out", a.to_str().unwrap()],
        &env,
    );
    assert!(ok, "{stderr}");
    assert!(!a.join("preprocessor_config.json").exists());
    let asked = server.requests().len();
    let b = dir.path().join("b");
    let (ok, _, stderr) = run_saeclip(
        &["fetch", "model", REPO, "--out", b.to_str().unwrap()],
        &env,
    );
    assert!(ok, "{stderr}");
    assert_eq!(server.requests().len(), asked, "{:?}", server.requests());
}
