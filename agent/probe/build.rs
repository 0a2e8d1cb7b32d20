//! Compiles the BPF programs in `agent-ebpf/` with clang and embeds the object in the agent.
//!
//! - `CLANG` names the compiler (default `clang-19`, then `clang`).
//! - `GODWIT_BPF_STUB=1` writes an empty object instead, so `cargo check` and clippy work on
//!   machines without clang; such an agent reports at start-up that it has no BPF programs and
//!   samples procfs.
//!
//! It also compiles `agent-ebpf/layout.c` for the host and runs it, producing the table of C
//! sizes and offsets that `probe::bpf` tests its `#[repr(C)]` mirrors against.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let ebpf = manifest.join("../../agent-ebpf");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets it"));
    let object = out.join("godwit.bpf.o");
    let layout = out.join("bpf_layout.rs");

    println!("cargo::rerun-if-changed={}", ebpf.join("src").display());
    println!(
        "cargo::rerun-if-changed={}",
        ebpf.join("include/godwit.h").display()
    );
    println!(
        "cargo::rerun-if-changed={}",
        ebpf.join("layout.c").display()
    );
    println!("cargo::rerun-if-env-changed=CLANG");
    println!("cargo::rerun-if-env-changed=GODWIT_BPF_STUB");
    println!("cargo::rustc-check-cfg=cfg(godwit_bpf_stub)");

    if env::var("GODWIT_BPF_STUB").is_ok_and(|v| v == "1") {
        println!("cargo::warning=GODWIT_BPF_STUB=1: building without BPF programs (procfs only)");
        println!("cargo::rustc-cfg=godwit_bpf_stub");
        std::fs::write(&object, b"").expect("write stub object");
        std::fs::write(
            &layout,
            "pub(crate) const C_LAYOUT: &[(&str, &str, usize)] = &[];\n",
        )
        .expect("write stub layout");
        return;
    }

    let clang = find_clang();
    let include = ebpf.join("include");
    run(Command::new(&clang)
        .args([
            "-g",
            "-O2",
            "-target",
            "bpf",
            "-D__TARGET_ARCH_x86",
            "-Wall",
            "-Werror",
        ])
        .arg("-I")
        .arg(&include)
        .arg("-c")
        .arg(ebpf.join("src/godwit.bpf.c"))
        .arg("-o")
        .arg(&object));

    let layout_bin = out.join("bpf_layout");
    run(Command::new(&clang)
        .args(["-O0", "-Wall"])
        .arg("-I")
        .arg(&include)
        .arg(ebpf.join("layout.c"))
        .arg("-o")
        .arg(&layout_bin));
    let printed = Command::new(&layout_bin).output().expect("run bpf_layout");
    assert!(printed.status.success(), "bpf_layout failed");
    std::fs::write(&layout, printed.stdout).expect("write layout table");
}

fn find_clang() -> PathBuf {
    if let Some(c) = env::var_os("CLANG") {
        return PathBuf::from(c);
    }
    for candidate in ["clang-19", "clang"] {
        if Command::new(candidate)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return PathBuf::from(candidate);
        }
    }
    panic!(
        "\n\nclang is needed to compile godwit's BPF programs (agent-ebpf/).\n\
         Install it:   apt-get install clang-19 llvm-19 libbpf-dev   (or run `cargo xtask test`)\n\
         or point CLANG at a clang binary, or build without BPF: GODWIT_BPF_STUB=1 cargo check\n"
    );
}

fn run(cmd: &mut Command) {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    assert!(status.success(), "{shown} failed with {status}");
}
