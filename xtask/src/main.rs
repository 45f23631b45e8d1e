//! Project automation, run as `cargo xtask <task>` (an alias in
//! `.cargo/config.toml`).
//!
//! - `cargo xtask ci`: every check CI runs, in order, stopping at the first
//!   failure: tidy (every Rust file opens with a `//!` comment), the system
//!   tools the tests need (etcd, protoc and protoc's include files,
//!   installed with apt-get when run as root), formatting, clippy, the tests
//!   (nextest when installed, and the doc tests), the examples, rustdoc
//!   (with its lints, broken intra-doc links among them, as errors),
//!   cargo-deny, a build of the facade with each feature alone and with
//!   none, and a build of each crate feature alone.
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
    "gensync",
    "viewreg",
    "etcd",
    "full",
    // `tower` acts only on viewreg (`flotilla-viewreg?/tower`): built with it.
    "viewreg,tower",
];

/// Crate features, each built alone as (package, features): the workspace
/// builds unify every crate's features, which can hide a feature that leans
/// on a dependency feature only another crate turns on. A crate that adds a
/// feature adds it here.
const CRATE_FEATURES: &[(&str, &str)] = &[("flotilla-viewreg", "tower")];

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
    "flotilla-gensync",
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
        _ => {
            eprintln!("usage: cargo xtask ci | cargo xtask bench [criterion args…]");
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
    let mut steps = 2;
    let mut step = |description: &str, command: &mut Command| -> Result<()> {
        steps += 1;
        run(description, command).with_context(|| {
            format!(
                "ci FAILED at step {steps} ({description}) after {:.0?}",
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
    step(
        "rustdoc",
        cargo(&root)
            .args([
                "doc",
                "--workspace",
                "--all-features",
                "--no-deps",
                "--locked",
            ])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;
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
    }
    println!(
        "xtask ci: all {steps} steps passed in {:.0?}",
        started.elapsed()
    );
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
}
