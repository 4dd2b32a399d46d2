//! `fetch sae` against a Hugging Face hub served on 127.0.0.1 by the test: one repository
//! holding a folder in each format the importer reads (the files
//! tests/reference/interop_reference.py writes with saev, eai-sparsify, dictionary-learning
//! or plain Python, and a SAE-Lens export), a repository with the SAE at its root, one in no
//! format and one whose weights do not match the SHA-256 the hub announces. Nothing here
//! touches the internet.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};

use saeclip::sae::checkpoint;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tch::{Device, Tensor};

const COMMIT: &str = "89abcdef0123456789abcdef0123456789abcdef";

fn fixtures() -> PathBuf {
    common::interop_fixtures()
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// repo id → (path in the repo → content).
type Repos = BTreeMap<String, BTreeMap<String, Vec<u8>>>;

/// Files stored in LFS on the hub (weights): resolved by a redirect with their SHA-256.
fn is_lfs(name: &str) -> bool {
    name.ends_with(".safetensors") || name.ends_with(".pt")
}

/// A hub serving `repos` at revision main: the listing (`/api/models/<repo>/revision/main`),
/// small files directly, LFS files through a redirect to `/cdn/<repo>/<file>`, announcing
/// `lie` (file → sha256) instead of the real SHA-256 where given. Every request path is
/// logged.
struct Hub {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Hub {
    fn start(repos: Repos, lie: BTreeMap<String, String>) -> Hub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let repos = Arc::new(repos);
        let lie = Arc::new(lie);
        let server_log = log.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let (repos, lie, log) = (repos.clone(), lie.clone(), server_log.clone());
                std::thread::spawn(move || {
                    if let Some((path, range)) = read_request(&mut stream) {
                        log.lock().unwrap().push(path.clone());
                        answer(&repos, &lie, addr, &path, range, &mut stream);
                    }
                    let _ = stream.flush();
                });
            }
        });
        Hub { addr, log }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

/// `Range: bytes=A-[B]`.
type Range = Option<(usize, Option<usize>)>;

/// The request's path and its range.
fn read_request(stream: &mut TcpStream) -> Option<(String, Range)> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_string();
    let mut range = None;
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
            if name.trim().eq_ignore_ascii_case("range") {
                range = value
                    .trim()
                    .strip_prefix("bytes=")
                    .and_then(|r| r.split_once('-'))
                    .map(|(a, b)| (a.parse().unwrap(), b.parse().ok()));
            }
        }
    }
    Some((path, range))
}

fn head(stream: &mut TcpStream, status: &str, headers: &[(&str, String)]) {
    let mut text = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    let _ = stream.write_all(text.as_bytes());
}

fn body(stream: &mut TcpStream, bytes: &[u8], range: Range, mut headers: Vec<(&str, String)>) {
    let total = bytes.len();
    let (status, start, end) = match range {
        Some((a, b)) => {
            let end = b.unwrap_or(total - 1).min(total - 1);
            headers.push(("Content-Range", format!("bytes {a}-{end}/{total}")));
            ("206 Partial Content", a, end)
        }
        None => ("200 OK", 0, total - 1),
    };
    headers.push(("Content-Length", (end + 1 - start).to_string()));
    head(stream, status, &headers);
    let _ = stream.write_all(&bytes[start..=end]);
}

fn answer(
    repos: &Repos,
    lie: &BTreeMap<String, String>,
    addr: SocketAddr,
    path: &str,
    range: Range,
    stream: &mut TcpStream,
) {
    let path = path.split('?').next().unwrap();
    let not_found = |stream: &mut TcpStream| {
        head(
            stream,
            "404 Not Found",
            &[
                ("Content-Length", "0".into()),
                ("X-Error-Code", "RepoNotFound".into()),
            ],
        )
    };
    if let Some(rest) = path.strip_prefix("/api/models/") {
        let Some((repo, _)) = rest.split_once("/revision/") else {
            return not_found(stream);
        };
        let Some(files) = repos.get(repo) else {
            return not_found(stream);
        };
        let siblings: Vec<Value> = files
            .iter()
            .map(|(name, bytes)| {
                let mut v = json!({"rfilename": name, "size": bytes.len()});
                if is_lfs(name) {
                    v["lfs"] = json!({"sha256": sha256_hex(bytes), "size": bytes.len()});
                }
                v
            })
            .collect();
        let text = serde_json::to_vec(&json!({"sha": COMMIT, "siblings": siblings})).unwrap();
        return body(
            stream,
            &text,
            None,
            vec![("Content-Type", "application/json".into())],
        );
    }
    if let Some(rest) = path.strip_prefix("/cdn/") {
        for (repo, files) in repos {
            if let Some(file) = rest.strip_prefix(&format!("{repo}/")) {
                if let Some(bytes) = files.get(file) {
                    return body(stream, bytes, range, Vec::new());
                }
            }
        }
        return not_found(stream);
    }
    for (repo, files) in repos {
        let Some(file) = path.strip_prefix(&format!("/{repo}/resolve/main/")) else {
            continue;
        };
        let Some(bytes) = files.get(file) else {
            return not_found(stream);
        };
        let mut headers = vec![("X-Repo-Commit", COMMIT.to_string())];
        if is_lfs(file) {
            let sha = lie.get(file).cloned().unwrap_or_else(|| sha256_hex(bytes));
            headers.push(("X-Linked-Etag", format!("\"{sha}\"")));
            headers.push(("X-Linked-Size", bytes.len().to_string()));
            headers.push(("ETag", "\"pointer\"".into()));
            headers.push(("Location", format!("http://{addr}/cdn/{repo}/{file}")));
            headers.push(("Content-Length", "0".into()));
            return head(stream, "302 Found", &headers);
        }
        headers.push(("ETag", format!("\"{}\"", &sha256_hex(bytes)[..40])));
        return body(stream, bytes, range, headers);
    }
    not_found(stream)
}

/// The files of `dir` as repository paths under `prefix`.
fn add_dir(files: &mut BTreeMap<String, Vec<u8>>, dir: &Path, prefix: &str) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = format!("{prefix}{}", e.file_name().to_str().unwrap());
        if e.path().is_dir() {
            add_dir(files, &e.path(), &format!("{name}/"));
        } else {
            files.insert(name, std::fs::read(e.path()).unwrap());
        }
    }
}

fn saeclip(args: &[&str], hub: &Hub, hf_home: &Path, cwd: &Path) -> Output {
    common::saeclip()
        .args(args)
        .current_dir(cwd)
        .env("HF_ENDPOINT", hub.url())
        .env("HF_HOME", hf_home)
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_CACHE")
        .output()
        .unwrap()
}

fn succeeds(o: &Output) -> (String, String) {
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    );
    assert!(o.status.success(), "failed: {out}\n{err}");
    (out.trim().to_string(), err)
}

/// Codes and reconstruction of the checkpoint equal the original's (`case/expected.safetensors`).
fn computes_like_original(ckpt: &Path, case: &Path) -> checkpoint::CheckpointMeta {
    let (sae, meta) = checkpoint::load_sae(ckpt, Device::Cpu).unwrap();
    let t: BTreeMap<String, Tensor> =
        saeclip::clip::weights::read_safetensors(&case.join("expected.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let what = case.display().to_string();
    common::close(
        &format!("{what}: codes"),
        &sae.encode(&t["x"]),
        &t["z"],
        1e-5,
    );
    common::close(
        &format!("{what}: reconstruction"),
        &sae.reconstruct(&t["x"]),
        &t["x_hat"],
        1e-5,
    );
    meta
}

fn hook_of(meta: &checkpoint::CheckpointMeta) -> (Value, Value) {
    (meta.clip["layer"].clone(), meta.clip["tokens"].clone())
}

/// The zoo: one folder per format, the SAE-Lens one exported by saeclip from an import.
fn zoo(work: &Path) -> Repos {
    let fx = fixtures();
    let mut zoo = BTreeMap::new();
    for case in [
        "saev_topk",
        "sparsify",
        "sparsify_run",
        "dl_topk",
        "prisma_topk",
    ] {
        add_dir(&mut zoo, &fx.join(case), &format!("{case}/"));
    }
    let ckpt = work.join("dl.safetensors");
    let lens = work.join("lens");
    for args in [
        vec![
            "import",
            s(&fx.join("dl_topk")),
            "--out",
            s(&ckpt),
            "--tokens",
            "patches",
        ],
        vec![
            "export",
            "--format",
            "saelens",
            "--sae",
            s(&ckpt),
            "--out",
            s(&lens),
        ],
    ] {
        succeeds(&common::saeclip().args(&args).output().unwrap());
    }
    add_dir(&mut zoo, &lens, "saelens/");
    zoo.insert("README.md".into(), b"# a zoo".to_vec());

    let mut root = BTreeMap::new();
    add_dir(&mut root, &fx.join("prisma_relu"), "");
    let mut nothing = BTreeMap::new();
    nothing.insert("README.md".to_string(), b"# nothing".to_vec());
    nothing.insert("model.safetensors".to_string(), b"not an sae".to_vec());
    nothing.insert("config.json".to_string(), b"{}".to_vec());
    let mut corrupt = BTreeMap::new();
    add_dir(&mut corrupt, &fx.join("dl_topk"), "");
    BTreeMap::from([
        ("org/zoo".to_string(), zoo),
        ("org/prisma-relu".to_string(), root),
        ("org/nothing".to_string(), nothing),
        ("org/corrupt".to_string(), corrupt),
    ])
}

#[test]
fn each_format_is_fetched_with_only_its_files_and_imported() {
    let fx = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hub = Hub::start(zoo(d), BTreeMap::new());
    let hf = d.join("hf");
    let out = d.join("ckpts");
    let fetch = |source: &str, extra: &[&str]| {
        let mut args = vec!["fetch", "sae", source, "--out", s(&out)];
        args.extend_from_slice(extra);
        saeclip(&args, &hub, &hf, d)
    };

    // saev (current layout): the hook point comes from checkpoint/config.json.
    let (stdout, stderr) = succeeds(&fetch("org/zoo/saev_topk", &[]));
    let ckpt = out.join("zoo-saev_topk.safetensors");
    assert_eq!(stdout, s(&ckpt));
    assert!(
        stderr.contains("saev") && stderr.contains("layer 5") && stderr.contains("tokens patches"),
        "{stderr}"
    );
    let meta = computes_like_original(&ckpt, &fx.join("saev_topk"));
    assert_eq!(hook_of(&meta), (5.into(), "patches".into()));
    let hub_rec = &meta.training["imported_from"]["hub"];
    assert_eq!(hub_rec["repo"], "org/zoo");
    assert_eq!(hub_rec["subfolder"], "saev_topk");
    assert_eq!(hub_rec["commit"], COMMIT);
    assert_eq!(hub_rec["format"], "saev");
    assert_eq!(
        meta.training["imported_from"]["path"],
        "hf://org/zoo/saev_topk"
    );
    let sae_pt = std::fs::read(fx.join("saev_topk/checkpoint/sae.pt")).unwrap();
    let listed = hub_rec["files"].as_array().unwrap();
    assert!(
        listed
            .iter()
            .any(|f| f["name"] == "saev_topk/checkpoint/sae.pt"
                && f["sha256"] == sha256_hex(&sae_pt).as_str()),
        "{listed:?}"
    );

    // sparsify, one folder (no hook point recorded: flags), and one hook of a run.
    succeeds(&fetch(
        "org/zoo/sparsify",
        &["--layer", "4", "--tokens", "all"],
    ));
    let meta = computes_like_original(&out.join("zoo-sparsify.safetensors"), &fx.join("sparsify"));
    assert_eq!(hook_of(&meta), (4.into(), "all".into()));
    let o = fetch("org/zoo/sparsify_run", &["--tokens", "patches"]);
    common::fails_cleanly(&o, "vision_model.encoder.layers.10");
    assert!(!out.join("zoo-sparsify_run.safetensors").exists());
    let hook = "vision_model.encoder.layers.10";
    succeeds(&fetch(
        "org/zoo/sparsify_run",
        &["--tokens", "patches", "--hook", hook],
    ));
    let meta = computes_like_original(
        &out.join("zoo-sparsify_run.safetensors"),
        &fx.join("sparsify_run").join(hook),
    );
    assert_eq!(hook_of(&meta), (10.into(), "patches".into()));
    assert_eq!(meta.clip["hook_name"], hook);
    succeeds(&fetch(
        &format!("org/zoo/sparsify_run/{hook}"),
        &["--tokens", "patches"],
    ));
    let meta = computes_like_original(
        &out.join(format!("zoo-sparsify_run-{hook}.safetensors")),
        &fx.join("sparsify_run").join(hook),
    );
    assert_eq!(meta.clip["layer"], 10);

    // dictionary_learning, ViT-Prisma, and the SAE-Lens export.
    succeeds(&fetch("org/zoo/dl_topk", &["--tokens", "cls"]));
    let meta = computes_like_original(&out.join("zoo-dl_topk.safetensors"), &fx.join("dl_topk"));
    assert_eq!(hook_of(&meta), (9.into(), "cls".into()));
    succeeds(&fetch("org/zoo/prisma_topk", &[]));
    let meta = computes_like_original(
        &out.join("zoo-prisma_topk.safetensors"),
        &fx.join("prisma_topk"),
    );
    assert_eq!(hook_of(&meta), (9.into(), "cls".into()));
    assert_eq!(meta.training["imported_from"]["format"], "prisma");
    succeeds(&fetch("org/zoo/saelens", &[]));
    let meta = computes_like_original(&out.join("zoo-saelens.safetensors"), &fx.join("dl_topk"));
    assert_eq!(meta.training["imported_from"]["hub"]["format"], "saelens");
    assert_eq!(hook_of(&meta), (9.into(), "patches".into()));

    // Only what each format reads was downloaded: never the other folders' files, nor the
    // reference outputs beside them, nor the other hook of the run.
    let requests = hub.requests();
    for never in [
        "expected.safetensors",
        "README.md",
        "vision_model.encoder.layers.3/",
    ] {
        assert!(
            !requests.iter().any(|r| r.contains(never)),
            "{never} requested: {requests:?}"
        );
    }
    // No scratch folder is left in the cache.
    let leftovers: Vec<_> = std::fs::read_dir(hf.join("hub"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".saeclip"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A rerun finds the checkpoint and asks nothing of the hub.
    let before = hub.requests().len();
    let (stdout, stderr) = succeeds(&fetch("org/zoo/saev_topk", &[]));
    assert_eq!(stdout, s(&ckpt));
    assert!(stderr.contains("already in"), "{stderr}");
    assert_eq!(hub.requests().len(), before);
    // Another source into an existing checkpoint is refused without --force.
    let taken = out.join("zoo-saev_topk.safetensors");
    let o = saeclip(
        &["fetch", "sae", "org/zoo/prisma_topk", "--out", s(&taken)],
        &hub,
        &hf,
        d,
    );
    common::fails_cleanly(&o, "--force");
}

#[test]
fn a_repository_root_and_the_default_checkpoint_path() {
    let fx = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hub = Hub::start(zoo(d), BTreeMap::new());
    let (stdout, _) = succeeds(&saeclip(
        &["fetch", "sae", "org/prisma-relu"],
        &hub,
        &d.join("hf"),
        d,
    ));
    assert_eq!(stdout, "checkpoints/prisma-relu.safetensors");
    let meta = computes_like_original(&d.join(&stdout), &fx.join("prisma_relu"));
    assert_eq!(hook_of(&meta), (9.into(), "all".into()));
}

#[test]
fn bad_repositories_fail_with_one_line_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hub = Hub::start(
        zoo(d),
        BTreeMap::from([("ae.pt".to_string(), "0".repeat(64))]),
    );
    let hf = d.join("hf");
    let out = d.join("none");
    let run = |source: &str, extra: &[&str]| {
        let mut args = vec!["fetch", "sae", source, "--out", s(&out)];
        args.extend_from_slice(extra);
        saeclip(&args, &hub, &hf, d)
    };
    // Files in no format: named, nothing downloaded but the listing, nothing written.
    let o = run("org/nothing", &[]);
    common::fails_cleanly(&o, "org/nothing is in none of the formats");
    common::fails_cleanly(&o, "model.safetensors");
    assert!(!out.exists());
    assert!(
        hub.requests().iter().all(|r| r.starts_with("/api/")),
        "{:?}",
        hub.requests()
    );
    // No such folder, no such repository.
    common::fails_cleanly(
        &run("org/zoo/missing", &[]),
        "no folder or file \"missing\"",
    );
    common::fails_cleanly(&run("org/absent", &[]), "HTTP 404");
    common::fails_cleanly(&run("org", &[]), "not REPO[/SUBFOLDER]");
    // Weights whose SHA-256 is not the one the hub announces.
    let o = run("org/corrupt", &["--tokens", "cls"]);
    common::fails_cleanly(&o, "sha256");
    assert!(!out.exists());
    // A folder that imports badly (no hook point): the importer's error, nothing written.
    common::fails_cleanly(&run("org/zoo/sparsify", &[]), "--layer");
    assert!(!out.exists());
}

#[test]
fn list_prints_the_known_releases() {
    let o = common::saeclip()
        .args(["fetch", "sae", "--list"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), saeclip::fetch::RELEASES.len() + 1, "{text}");
    assert!(lines[0].contains("backbone") && lines[0].contains("width"));
    assert!(
        text.contains("osunlp/SAE_CLIP_24K_ViT-B-16_IN1K") && text.contains("24576"),
        "{text}"
    );
}
