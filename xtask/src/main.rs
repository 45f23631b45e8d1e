//! Project automation, run as `cargo xtask <task>` (an alias in
//! `.cargo/config.toml`).
//!
//! - `cargo xtask ci`: every check CI runs, in order, stopping at the first
//!   failure: tidy (every Rust file opens with a `//!` comment), the system
//!   tools the tests need (etcd, protoc and protoc's include files,
//!   installed with apt-get when run as root), formatting, clippy, the tests
//!   (nextest when installed, and the doc tests), the examples, rustdoc
//!   (one package at a time in dependency order, its lints as errors, then
//!   a scan of the pages for intra-doc links rendered as text),
//!   cargo-deny, a build of the facade with each feature alone and with
//!   none, and a build of each crate feature alone.
//! - `cargo xtask doc`: the docs, as `ci` builds and checks them, into
//!   `target/doc`.
//! - `cargo xtask bench [ARGS…]`: the criterion benchmarks in release mode.
//!
//! Each command is printed before it runs; `ci` ends with one summary line.

use std::env;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The facade's features, each built alone by `ci` (one that acts only on
/// a crate's, with that crate). A crate added to the workspace adds its
/// feature here.
const FACADE_FEATURES: &[&str] = &[
    "depengine",
    "publisher",
    "presence",
    "gensync",
    "viewreg",
    "etcd",
    "full",
    // `tower` and `grpc` act only on viewreg (`flotilla-viewreg?/…`): built
    // with it; `etcd` also with viewreg alone and presence alone, whose etcd
    // backends it enables.
    "viewreg,tower",
    "viewreg,grpc",
    "viewreg,etcd",
    "presence,etcd",
];

/// Crate features, each built alone as (package, features): the workspace
/// builds unify every crate's features, which can hide a feature that leans
/// on a dependency feature only another crate turns on. A crate that adds a
/// feature adds it here.
const CRATE_FEATURES: &[(&str, &str)] = &[
    ("flotilla-core-types", "etcd"),
    ("flotilla-viewreg", "tower"),
    ("flotilla-viewreg", "etcd"),
    ("flotilla-viewreg", "grpc"),
    ("flotilla-viewreg", "etcd,grpc"),
    ("flotilla-presence", "etcd"),
];

/// The examples `ci` runs, as (package, features, example): each must end
/// cleanly, as a user running it would expect.
const EXAMPLES: &[(&str, &str, &str)] = &[
    ("flotilla-depengine", "", "supervision"),
    ("flotilla-publisher", "", "publish"),
    ("flotilla", "full", "compose"),
];

/// The crates with benchmarks, run by `bench`.
const BENCHED_CRATES: &[&str] = &[
    "flotilla-depengine",
    "flotilla-publisher",
    "flotilla-presence",
    "flotilla-viewreg",
    "flotilla-gensync",
];

/// The workspace's packages in dependency order, each with the target
/// rustdoc documents. They are documented one at a time in this order
/// because rustdoc renders a link to another crate as a link only when that
/// crate's docs are already on disk (and cargo, documenting a workspace at
/// once, runs them side by side and removes a crate's old docs before it
/// writes new ones); in this order the rendering, and so the check of it,
/// is the same on every run.
const DOC_ORDER: &[(&str, &str)] = &[
    ("flotilla-core-types", "--lib"),
    ("flotilla-identity", "--lib"),
    ("flotilla-testkit", "--lib"),
    ("flotilla-depengine", "--lib"),
    ("flotilla-publisher", "--lib"),
    ("flotilla-presence", "--lib"),
    ("flotilla-gensync", "--lib"),
    ("flotilla-viewreg", "--lib"),
    ("flotilla", "--lib"),
    ("xtask", "--bins"),
];

/// The Debian packages behind the tools the tests need: etcd for the tests
/// against real etcd, protoc and the well-known `.proto` files it includes
/// (`google/protobuf/*.proto`, in libprotobuf-dev, which protobuf-compiler
/// only recommends) to build etcd-client.
const SYSTEM_PACKAGES: &[&str] = &["etcd-server", "protobuf-compiler", "libprotobuf-dev"];

/// A well-known proto file etcd-client's build includes; its presence proves
/// protoc's include files are installed, not just the binary.
const WELL_KNOWN_PROTO: &str = "google/protobuf/descriptor.proto";

/// Where protoc looks for its include files when `PROTOC_INCLUDE` is unset,
/// as Debian's protoc and prost-build do.
const DEFAULT_PROTOC_INCLUDES: &[&str] = &["/usr/include", "/usr/local/include"];

/// Where the advisory database lives; `ci` checks advisories only when this
/// answers.
const ADVISORY_DB_HOST: (&str, u16) = ("github.com", 443);

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("bench") => bench(&args[1..]),
        Some("doc") => doc(),
        _ => {
            eprintln!(
                "usage: cargo xtask ci | cargo xtask doc | cargo xtask bench [criterion args…]"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn ci() -> Result<()> {
    let started = Instant::now();
    let root = workspace_root()?;
    println!("\n==> tidy: every Rust file opens with a //! comment saying what it is for");
    tidy(&root).context("ci FAILED at step 1 (tidy)")?;
    println!("\n==> system tools: etcd, protoc and protoc's include files");
    ensure_system_tools().context("ci FAILED at step 2 (system tools)")?;
    let steps = std::cell::Cell::new(2);
    let step = |description: &str, command: &mut Command| -> Result<()> {
        steps.set(steps.get() + 1);
        run(description, command).with_context(|| {
            format!(
                "ci FAILED at step {} ({description}) after {:.0?}",
                steps.get(),
                started.elapsed()
            )
        })
    };

    step("formatting", cargo(&root).args(["fmt", "--all", "--check"]))?;
    step(
        "clippy",
        cargo(&root).args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--locked",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    if has_nextest(&root) {
        step(
            "tests (nextest)",
            cargo(&root).args([
                "nextest",
                "run",
                "--workspace",
                "--all-features",
                "--locked",
                "--profile",
                "ci",
            ]),
        )?;
        step(
            "doc tests",
            cargo(&root).args(["test", "--workspace", "--all-features", "--locked", "--doc"]),
        )?;
    } else {
        println!("note: cargo-nextest not found; running the tests with cargo test");
        step(
            "tests",
            cargo(&root).args(["test", "--workspace", "--all-features", "--locked"]),
        )?;
    }
    for (package, features, example) in EXAMPLES {
        let mut run_example = cargo(&root);
        run_example.args(["run", "--locked", "-p", package, "--example", example]);
        if !features.is_empty() {
            run_example.args(["--features", features]);
        }
        step(&format!("example {example} of {package}"), &mut run_example)?;
    }
    document(&root, &step)?;
    steps.set(steps.get() + 1);
    println!("\n==> rendered docs: no intra-doc link left as literal text");
    check_rendered_links(&target_dir(&root).join("doc"))
        .with_context(|| format!("ci FAILED at step {} (rendered docs)", steps.get()))?;
    ensure_cargo_deny(&root)?;
    step(
        "cargo deny (bans, licenses, sources)",
        cargo(&root).args(["deny", "--locked", "check", "bans", "licenses", "sources"]),
    )?;
    if reachable(ADVISORY_DB_HOST) {
        step(
            "cargo deny (advisories)",
            cargo(&root).args(["deny", "--locked", "check", "advisories"]),
        )?;
    } else {
        println!(
            "SKIPPED: cargo deny check advisories: the advisory database host {} is unreachable from here",
            ADVISORY_DB_HOST.0
        );
    }
    for feature in std::iter::once(None).chain(FACADE_FEATURES.iter().map(Some)) {
        let mut build = cargo(&root);
        build.args([
            "build",
            "--locked",
            "-p",
            "flotilla",
            "--no-default-features",
        ]);
        let description = match feature {
            Some(feature) if feature.contains(',') => {
                build.args(["--features", feature]);
                format!("facade with features {feature} alone")
            }
            Some(feature) => {
                build.args(["--features", feature]);
                format!("facade with feature {feature} alone")
            }
            None => "facade with no features".to_owned(),
        };
        step(&description, &mut build)?;
    }
    for (package, features) in CRATE_FEATURES {
        step(
            &format!("{package} with feature {features} alone"),
            cargo(&root).args([
                "build",
                "--locked",
                "-p",
                package,
                "--no-default-features",
                "--features",
                features,
            ]),
        )?;
        // Its tests, examples and benches too: code gated on a feature
        // must compile with that feature and no other.
        step(
            &format!("{package}'s tests and benches with feature {features} alone"),
            cargo(&root).args([
                "check",
                "--locked",
                "--all-targets",
                "-p",
                package,
                "--no-default-features",
                "--features",
                features,
            ]),
        )?;
    }
    println!(
        "xtask ci: all {} steps passed in {:.0?}",
        steps.get(),
        started.elapsed()
    );
    Ok(())
}

/// `cargo xtask doc`: the docs as `ci` builds and checks them.
fn doc() -> Result<()> {
    let root = workspace_root()?;
    document(&root, &run)?;
    check_rendered_links(&target_dir(&root).join("doc"))
}

/// Documents every package in [`DOC_ORDER`], rustdoc's lints as errors.
fn document(root: &Path, step: &dyn Fn(&str, &mut Command) -> Result<()>) -> Result<()> {
    for (package, target) in DOC_ORDER {
        step(
            &format!("rustdoc of {package}"),
            cargo(root)
                .args([
                    "rustdoc",
                    "--locked",
                    "--all-features",
                    "-p",
                    package,
                    target,
                ])
                .env("RUSTDOCFLAGS", "-D warnings"),
        )?;
    }
    Ok(())
}

fn bench(extra: &[String]) -> Result<()> {
    let root = workspace_root()?;
    for package in BENCHED_CRATES {
        let mut command = cargo(&root);
        command.args(["bench", "--locked", "--all-features", "-p", package]);
        if !extra.is_empty() {
            command.arg("--").args(extra);
        }
        run(&format!("benchmarks of {package}"), &mut command)?;
    }
    Ok(())
}

/// Checks that every Rust source file under `crates/` and `xtask/` opens
/// with a `//!` comment, as rust-analyzer's tidy test does.
fn tidy(root: &Path) -> Result<()> {
    let mut files = Vec::new();
    for folder in ["crates", "xtask"] {
        rust_files(&root.join(folder), &mut files)?;
    }
    let mut missing = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        if !text.starts_with("//!") {
            missing.push(
                file.strip_prefix(root)
                    .unwrap_or(file)
                    .display()
                    .to_string(),
            );
        }
    }
    if !missing.is_empty() {
        bail!(
            "these files do not open with a //! comment:\n  {}",
            missing.join("\n  ")
        );
    }
    println!("{} Rust files checked", files.len());
    Ok(())
}

fn rust_files(folder: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    for entry in
        std::fs::read_dir(folder).with_context(|| format!("cannot list {}", folder.display()))?
    {
        let path = entry?.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|name| name == "target") {
                continue;
            }
            rust_files(&path, files)?;
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            files.push(path);
        }
    }
    Ok(())
}

/// Makes sure etcd (for the tests against real etcd) and protoc (to build
/// etcd-client) can run: as root on Debian, installs them with apt-get;
/// otherwise fails saying exactly what to install. The etcd tests are never
/// skipped, so a machine without etcd fails here, early and clearly.
fn ensure_system_tools() -> Result<()> {
    let missing = missing_tools();
    if missing.is_empty() {
        println!("etcd, protoc and {WELL_KNOWN_PROTO} found");
        return Ok(());
    }
    let can_install = is_root() && Command::new("apt-get").arg("--version").output().is_ok();
    if !can_install {
        bail!(
            "missing {}: install Debian's {} (as root: `apt-get install -y {}`), or point \
             ETCD_BIN, PROTOC and PROTOC_INCLUDE at an etcd 3.4+, a protoc binary and the \
             folder holding google/protobuf/descriptor.proto",
            missing.join(" and "),
            SYSTEM_PACKAGES.join(" and "),
            SYSTEM_PACKAGES.join(" ")
        );
    }
    let apt = |args: &[&str]| {
        let mut command = Command::new("apt-get");
        command.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        command
    };
    run("apt-get update", &mut apt(&["update", "-qq"]))?;
    let mut install = apt(&["install", "-y", "-qq", "--no-install-recommends"]);
    install.args(SYSTEM_PACKAGES);
    run("install etcd, protoc and its include files", &mut install)?;
    let still_missing = missing_tools();
    if !still_missing.is_empty() {
        bail!(
            "{} still missing after apt-get install of {}",
            still_missing.join(" and "),
            SYSTEM_PACKAGES.join(" ")
        );
    }
    Ok(())
}

/// Which of etcd, protoc and protoc's well-known include files cannot be
/// found, as the tests and build scripts would look for them.
fn missing_tools() -> Vec<&'static str> {
    let runs = |program: String| {
        Command::new(program)
            .arg("--version")
            .output()
            .is_ok_and(|output| output.status.success())
    };
    let mut missing = Vec::new();
    if !runs(env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".to_owned())) {
        missing.push("etcd");
    }
    if !runs(env::var("PROTOC").unwrap_or_else(|_| "protoc".to_owned())) {
        missing.push("protoc");
    }
    if !has_well_known_protos() {
        missing.push("protoc's include files (google/protobuf/descriptor.proto)");
    }
    missing
}

/// Whether the well-known proto files are where protoc will look: under
/// `PROTOC_INCLUDE` when it is set, else under the default include folders.
fn has_well_known_protos() -> bool {
    let folders: Vec<PathBuf> = match env::var_os("PROTOC_INCLUDE") {
        Some(folder) => vec![PathBuf::from(folder)],
        None => DEFAULT_PROTOC_INCLUDES.iter().map(PathBuf::from).collect(),
    };
    well_known_protos_in(&folders)
}

/// Whether one of `folders` holds the well-known proto files.
fn well_known_protos_in(folders: &[PathBuf]) -> bool {
    folders
        .iter()
        .any(|folder| folder.join(WELL_KNOWN_PROTO).is_file())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.stdout.trim_ascii() == b"0")
}

/// Installs cargo-deny with `cargo install --locked` when it is missing.
fn ensure_cargo_deny(root: &Path) -> Result<()> {
    let present = Command::new(cargo_binary())
        .args(["deny", "--version"])
        .current_dir(root)
        .output()
        .is_ok_and(|output| output.status.success());
    if present {
        return Ok(());
    }
    run(
        "install cargo-deny",
        cargo(root).args(["install", "--locked", "cargo-deny"]),
    )
}

fn has_nextest(root: &Path) -> bool {
    Command::new(cargo_binary())
        .args(["nextest", "--version"])
        .current_dir(root)
        .output()
        .is_ok_and(|output| output.status.success())
}

/// Whether a TCP connection to `host` opens within a few seconds.
fn reachable((host, port): (&str, u16)) -> bool {
    let Ok(addresses) = (host, port).to_socket_addrs() else {
        return false;
    };
    addresses
        .into_iter()
        .any(|address| TcpStream::connect_timeout(&address, Duration::from_secs(3)).is_ok())
}

/// Prints the command, runs it, and fails unless it succeeds.
fn run(description: &str, command: &mut Command) -> Result<()> {
    println!("\n==> {description}");
    println!("$ {}", display(command));
    let status = command
        .status()
        .with_context(|| format!("could not run {}", display(command)))?;
    if !status.success() {
        bail!("{} exited with {status}", display(command));
    }
    Ok(())
}

fn display(command: &Command) -> String {
    let mut shown = String::new();
    for (key, value) in command.get_envs() {
        if let Some(value) = value {
            shown.push_str(&format!(
                "{}={} ",
                key.to_string_lossy(),
                value.to_string_lossy()
            ));
        }
    }
    shown.push_str(&command.get_program().to_string_lossy());
    for arg in command.get_args() {
        shown.push(' ');
        shown.push_str(&arg.to_string_lossy());
    }
    shown
}

/// Fails when a generated page shows an intra-doc link as literal text
/// (`` [`Name`] `` rendered as "\[Name\]", when rustdoc could resolve the
/// path but not where its page is) or as a link to a Rust path instead of a
/// page (an `href` of `Worker::report`), or links to a page that was not
/// written (a dependency's item: only the workspace is documented, so
/// such links need a docs.rs URL). Paths into crates not documented here
/// are not counted, and blanket implementations are skipped: their docs
/// come from other crates' traits.
fn check_rendered_links(doc_dir: &Path) -> Result<()> {
    let mut pages = Vec::new();
    html_pages(doc_dir, &mut pages)?;
    if pages.is_empty() {
        bail!("no generated pages under {}", doc_dir.display());
    }
    let mut found = Vec::new();
    let mut exists = std::collections::HashMap::new();
    for page in &pages {
        let html = std::fs::read_to_string(page)
            .with_context(|| format!("cannot read {}", page.display()))?;
        let own = html
            .find("id=\"blanket-implementations\"")
            .map_or(html.as_str(), |end| &html[..end]);
        for literal in unrendered_links(own, |krate| doc_dir.join(krate).is_dir()) {
            found.push(format!("{}: {literal}", page.display()));
        }
        // rustdoc's own pages at the top (help, settings) link a top
        // index.html it writes only for a whole workspace; they are not ours.
        let Some(folder) = page.parent().filter(|folder| *folder != doc_dir) else {
            continue;
        };
        for target in dead_relative_links(own, |target| {
            *exists
                .entry(folder.join(target))
                .or_insert_with_key(|path| path.exists())
        }) {
            found.push(format!(
                "{}: href=\"{target}\" (no such page)",
                page.display()
            ));
        }
    }
    if !found.is_empty() {
        bail!(
            "{} broken doc link(s): write the full path, link a page this crate documents, or give a foreign item's docs.rs URL:\n{}",
            found.len(),
            found.join("\n")
        );
    }
    println!("{} pages checked", pages.len());
    Ok(())
}

/// The broken links in one page's HTML: `[<code>…</code>]` (a link left
/// as text) and `href` values that are Rust paths, unless the path starts
/// with a crate (a lowercase first segment) that `documented` says is not
/// documented here.
fn unrendered_links(html: &str, documented: impl Fn(&str) -> bool) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find("[<code>") {
        let after = &rest[start + "[<code>".len()..];
        if let Some(end) = after.find("</code>]")
            && end <= 120
            && !after[..end].contains('<')
        {
            found.push(format!("[{}]", &after[..end]));
        }
        rest = after;
    }
    let mut rest = html;
    while let Some(start) = rest.find("href=\"") {
        let after = &rest[start + "href=\"".len()..];
        let Some(end) = after.find('"') else { break };
        let target = &after[..end];
        let first = target.split("::").next().unwrap_or(target);
        let foreign = first.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            && !matches!(first, "crate" | "self" | "super")
            && !documented(first);
        if target.contains("::") && !target.contains('/') && !target.contains('#') && !foreign {
            found.push(format!("href=\"{target}\""));
        }
        rest = &after[end..];
    }
    found
}

/// The relative `href`s of one page (its own file links, not Rust paths,
/// URLs, fragments or the page script's `${...}` templates) that point at
/// no file: a link into a crate that is
/// not documented here, which rustdoc writes as if it were.
fn dead_relative_links(html: &str, mut exists: impl FnMut(&str) -> bool) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find("href=\"") {
        let after = &rest[start + "href=\"".len()..];
        let Some(end) = after.find('"') else { break };
        let target = &after[..end];
        let file = target.split(['#', '?']).next().unwrap_or(target);
        let relative = !file.is_empty()
            && !file.contains("::")
            && !file.contains([':', '$'])
            && !file.starts_with('/');
        if relative && !exists(file) && !found.iter().any(|seen| seen == target) {
            found.push(target.to_owned());
        }
        rest = &after[end..];
    }
    found
}

/// Every generated page under `folder`, leaving out the rendered sources.
fn html_pages(folder: &Path, pages: &mut Vec<PathBuf>) -> Result<()> {
    let entries =
        std::fs::read_dir(folder).with_context(|| format!("cannot list {}", folder.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|name| name != "src") {
                html_pages(&path, pages)?;
            }
        } else if path.extension().is_some_and(|ext| ext == "html") {
            pages.push(path);
        }
    }
    Ok(())
}

/// Where cargo writes its output for this workspace.
fn target_dir(root: &Path) -> PathBuf {
    env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

fn cargo(root: &Path) -> Command {
    let mut command = Command::new(cargo_binary());
    command.current_dir(root);
    command
}

fn cargo_binary() -> String {
    env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// The workspace root: the parent of this crate's manifest directory.
fn workspace_root() -> Result<PathBuf> {
    let manifest_dir = env::var("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .or_else(|_| env::current_dir())
        .context("cannot find the workspace")?;
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .context("xtask is not inside the workspace")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh, empty folder under the system's temporary folder.
    fn scratch(name: &str) -> PathBuf {
        let folder = env::temp_dir().join(format!("xtask-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&folder);
        std::fs::create_dir_all(&folder).expect("scratch folder");
        folder
    }

    #[test]
    fn a_protoc_without_its_include_files_is_caught() {
        // What a machine with protobuf-compiler but not libprotobuf-dev has:
        // an include folder without google/protobuf.
        let bare = scratch("bare");
        assert!(!well_known_protos_in(std::slice::from_ref(&bare)));
        assert!(!well_known_protos_in(&[]));

        let complete = scratch("complete");
        let proto = complete.join(WELL_KNOWN_PROTO);
        std::fs::create_dir_all(proto.parent().expect("has a parent")).expect("folders");
        std::fs::write(&proto, "syntax = \"proto2\";").expect("writes");
        assert!(well_known_protos_in(&[bare.clone(), complete.clone()]));

        // A folder of that name is not the file.
        let fake = scratch("fake");
        std::fs::create_dir_all(fake.join(WELL_KNOWN_PROTO)).expect("folders");
        assert!(!well_known_protos_in(std::slice::from_ref(&fake)));

        for folder in [bare, complete, fake] {
            let _ = std::fs::remove_dir_all(folder);
        }
    }

    #[test]
    fn the_install_list_names_the_include_files_package() {
        assert!(SYSTEM_PACKAGES.contains(&"libprotobuf-dev"));
    }

    #[test]
    fn links_left_as_text_are_found_and_rendered_ones_are_not() {
        let html = concat!(
            "<p>See <a href=\"struct.Engine.html\"><code>Engine</code></a>, ",
            "[<code>TaskWorker</code>] and <a href=\"Worker::report\"><code>report</code></a>; ",
            "<a href=\"../flotilla_core_types/trait.Worker.html#tymethod.kill\">kill</a>, ",
            "a slice <code>[u8]</code> and [<code>a</code><a href=\"x.html\">b</a>], ",
            "<a href=\"tokio_util::sync::CancellationToken\">elsewhere</a>, ",
            "<a href=\"flotilla_core_types::Name\">here</a>.</p>",
        );
        let documented = |krate: &str| krate.starts_with("flotilla");
        assert_eq!(
            unrendered_links(html, documented),
            [
                "[TaskWorker]",
                "href=\"Worker::report\"",
                "href=\"flotilla_core_types::Name\""
            ]
        );
        assert!(unrendered_links("<p>nothing to see</p>", documented).is_empty());
    }

    #[test]
    fn relative_links_to_missing_pages_are_found() {
        let html = concat!(
            "<a href=\"struct.Engine.html#method.kill\">kill</a> ",
            "<a href=\"../tower/discover/enum.Change.html\">Change</a> ",
            "<a href=\"../tower/discover/enum.Change.html#variant.Insert\">Insert</a> ",
            "<a href=\"https://docs.rs/tower\">tower</a> <a href=\"#examples\">§</a> ",
            "<a href=\"Worker::report\">report</a> <a href=\"../static.files/a.css?v=1\">css</a>",
        );
        let present = ["struct.Engine.html", "../static.files/a.css"];
        let mut asked = Vec::new();
        let dead = dead_relative_links(html, |file| {
            asked.push(file.to_owned());
            present.contains(&file)
        });
        assert_eq!(
            dead,
            [
                "../tower/discover/enum.Change.html",
                "../tower/discover/enum.Change.html#variant.Insert"
            ]
        );
        assert!(
            !asked
                .iter()
                .any(|file| file.contains(':') || file.contains('#'))
        );
    }

    #[test]
    fn every_package_is_documented_after_the_packages_it_depends_on() {
        let root = workspace_root().expect("inside the workspace");
        let mut manifests = vec![root.join("xtask/Cargo.toml")];
        for entry in std::fs::read_dir(root.join("crates")).expect("crates folder") {
            manifests.push(entry.expect("entry").path().join("Cargo.toml"));
        }
        let position = |package: &str| DOC_ORDER.iter().position(|(name, _)| *name == package);
        for manifest in manifests {
            let text = std::fs::read_to_string(&manifest).expect("manifest");
            let name = text
                .lines()
                .find_map(|line| line.strip_prefix("name = \""))
                .and_then(|rest| rest.strip_suffix('"'))
                .expect("a package name");
            let at = position(name).unwrap_or_else(|| panic!("{name} is missing from DOC_ORDER"));
            let dependencies = text
                .split("\n[dependencies]\n")
                .nth(1)
                .map(|rest| rest.split("\n[").next().unwrap_or(rest))
                .unwrap_or("");
            for line in dependencies.lines() {
                let Some(dependency) = line.split_whitespace().next() else {
                    continue;
                };
                if let Some(before) = position(dependency) {
                    assert!(
                        before < at,
                        "{dependency} must come before {name} in DOC_ORDER"
                    );
                }
            }
        }
    }
}
