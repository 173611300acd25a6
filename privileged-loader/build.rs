//! Compiles every `bpf/*.bpf.c` with clang into a CO-RE object in OUT_DIR and generates
//! the table of embedded objects (`objects.rs` includes it). Asset name = file stem
//! without `.bpf.c`, e.g. `bpf/conntrack.bpf.c` → asset `conntrack`.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::{env, fs};

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let bpf_dir = manifest.join("../bpf");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_string());
    println!("cargo:rerun-if-changed={}", bpf_dir.display());
    println!("cargo:rerun-if-env-changed=CLANG");

    let mut sources: Vec<PathBuf> = fs::read_dir(&bpf_dir)
        .expect("bpf/ is part of the repository")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".bpf.c"))
        .collect();
    sources.sort();
    for header in fs::read_dir(bpf_dir.join("include")).into_iter().flatten().flatten() {
        println!("cargo:rerun-if-changed={}", header.path().display());
    }

    let mut table = String::from("pub(crate) static EMBEDDED: &[(&str, &[u8])] = &[\n");
    for source in &sources {
        let name = asset_name(source);
        let object = out.join(format!("{name}.bpf.o"));
        compile(&clang, &bpf_dir, source, &object);
        table.push_str(&format!(
            "    ({name:?}, aligned!({:?})),\n",
            object.to_str().expect("OUT_DIR is valid UTF-8")
        ));
    }
    table.push_str("];\n");
    fs::write(out.join("embedded_objects.rs"), table).expect("write embedded_objects.rs");
}

fn asset_name(source: &Path) -> String {
    let file = source.file_name().and_then(|f| f.to_str()).expect("source file name is UTF-8");
    file.trim_end_matches(".bpf.c").to_string()
}

fn compile(clang: &str, bpf_dir: &Path, source: &Path, object: &Path) {
    println!("cargo:rerun-if-changed={}", source.display());
    let status = Command::new(clang)
        .args(["-g", "-O2", "-target", "bpf", "-D__TARGET_ARCH_x86", "-Wall", "-Werror"])
        .arg("-I")
        .arg(bpf_dir.join("include"))
        // Debian keeps <asm/types.h> (pulled in by <linux/types.h>) in the multiarch
        // directory, which clang does not search for `-target bpf`.
        .args(["-idirafter", "/usr/include/x86_64-linux-gnu"])
        .arg("-c")
        .arg(source)
        .arg("-o")
        .arg(object)
        .status()
        .unwrap_or_else(|e| {
            panic!("cannot run {clang} to build eBPF objects ({e}): install clang and libbpf-dev (apt-get install clang libbpf-dev)")
        });
    assert!(status.success(), "clang failed on {}: see the errors above", source.display());
}
