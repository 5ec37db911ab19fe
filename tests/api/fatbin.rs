//! scripts/fatbin_prune.py on small ELF files made here: it keeps one architecture's cubins in each fat binary
//! that has them, leaves the others whole, and refuses malformed files with a message instead of a traceback.

use std::path::{Path, PathBuf};

const MAGIC: u32 = 0xBA55_ED50;

/// One fat binary entry: a 64-byte header (kind, header size, payload size, arch at 28) and its payload.
fn entry(arch: u32, payload: &[u8]) -> Vec<u8> {
    let mut e = vec![0u8; 64];
    e[0..2].copy_from_slice(&2u16.to_le_bytes());
    e[4..8].copy_from_slice(&64u32.to_le_bytes());
    e[8..16].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    e[28..32].copy_from_slice(&arch.to_le_bytes());
    e.extend_from_slice(payload);
    e
}

/// A fat binary holding `entries`, padded to 8 bytes.
fn fatbin(entries: &[Vec<u8>]) -> Vec<u8> {
    let body: Vec<u8> = entries.concat();
    let mut f = Vec::new();
    f.extend_from_slice(&MAGIC.to_le_bytes());
    f.extend_from_slice(&1u16.to_le_bytes());
    f.extend_from_slice(&16u16.to_le_bytes());
    f.extend_from_slice(&(body.len() as u64).to_le_bytes());
    f.extend_from_slice(&body);
    f.resize(f.len().div_ceil(8) * 8, 0);
    f
}

/// A 64-bit little-endian ELF file with a string table and one `.nv_fatbin` section holding `section`.
fn elf(section: &[u8]) -> Vec<u8> {
    let names = b"\0.shstrtab\0.nv_fatbin\0";
    let mut file = vec![0u8; 64];
    file[0..4].copy_from_slice(b"\x7fELF");
    file[4] = 2;
    file[5] = 1;
    file[6] = 1;
    let names_at = file.len();
    file.extend_from_slice(names);
    file.resize(file.len().div_ceil(8) * 8, 0);
    let section_at = file.len();
    file.extend_from_slice(section);
    let headers_at = file.len();
    let header = |name: u32, offset: usize, size: usize| {
        let mut h = vec![0u8; 64];
        h[0..4].copy_from_slice(&name.to_le_bytes());
        h[0x18..0x20].copy_from_slice(&(offset as u64).to_le_bytes());
        h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
        h
    };
    file.extend(header(0, 0, 0));
    file.extend(header(1, names_at, names.len()));
    file.extend(header(11, section_at, section.len()));
    file[0x28..0x30].copy_from_slice(&(headers_at as u64).to_le_bytes());
    file[0x3A..0x3C].copy_from_slice(&64u16.to_le_bytes());
    file[0x3C..0x3E].copy_from_slice(&3u16.to_le_bytes());
    file[0x3E..0x40].copy_from_slice(&1u16.to_le_bytes());
    file
}

/// Runs the script on `input`; its exit success, stdout+stderr, and the output file.
fn prune(dir: &Path, input: &[u8], arch: &str) -> (bool, String, Option<Vec<u8>>) {
    let (src, dst) = (dir.join("in.so"), dir.join("out.so"));
    std::fs::write(&src, input).expect("write");
    let _ = std::fs::remove_file(&dst);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/fatbin_prune.py");
    let output = std::process::Command::new("python3")
        .arg(script)
        .arg(&src)
        .arg(&dst)
        .arg(arch)
        .output()
        .expect("python3 runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text, std::fs::read(&dst).ok())
}

#[test]
fn only_the_chosen_architecture_stays_and_offsets_do_not_move() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mixed = fatbin(&[
        entry(80, &[0xAA; 100]),
        entry(90, &[0xBB; 50]),
        entry(86, &[0xCC; 30]),
    ]);
    let other = fatbin(&[entry(120, &[0xDD; 40])]);
    let section = [mixed.clone(), other.clone()].concat();
    let input = elf(&section);
    let (ok, text, out) = prune(dir.path(), &input, "90");
    assert!(ok, "{text}");
    assert!(
        text.contains("kept architecture 90 in 1 fat binaries"),
        "{text}"
    );
    let out = out.expect("written");
    assert_eq!(out.len(), input.len(), "nothing moves");
    let at = input
        .windows(4)
        .position(|w| w == MAGIC.to_le_bytes())
        .expect("first fat binary");
    let kept = entry(90, &[0xBB; 50]);
    let fat_size = u64::from_le_bytes(out[at + 8..at + 16].try_into().expect("8 bytes"));
    assert_eq!(fat_size, kept.len() as u64);
    assert_eq!(&out[at + 16..at + 16 + kept.len()], &kept[..]);
    let rest = &out[at + 16 + kept.len()..at + mixed.len()];
    assert!(rest.iter().all(|b| *b == 0), "the dropped cubins are zeros");
    assert_eq!(
        &out[at + mixed.len()..at + mixed.len() + other.len()],
        &other[..],
        "a fat binary without the architecture is left whole"
    );
    assert_eq!(&out[..at], &input[..at]);
    assert_eq!(&out[at + section.len()..], &input[at + section.len()..]);
}

#[test]
fn malformed_files_are_refused_with_a_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = elf(&fatbin(&[entry(80, &[1; 16]), entry(90, &[2; 16])]));
    let mut past_its_fatbin = fatbin(&[entry(90, &[2; 16])]);
    past_its_fatbin[16 + 8..16 + 16].copy_from_slice(&1000u64.to_le_bytes());
    let mut fat_past_section = fatbin(&[entry(90, &[2; 16])]);
    fat_past_section[8..16].copy_from_slice(&100_000u64.to_le_bytes());
    let mut no_fatbin_section = good.clone();
    let names = no_fatbin_section
        .windows(10)
        .position(|w| w == b".nv_fatbin")
        .expect("name");
    no_fatbin_section[names + 1] = b'x';
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "not ELF",
            b"#!/bin/sh\necho hello\n".to_vec(),
            "not a 64-bit little-endian ELF",
        ),
        ("empty", Vec::new(), "not a 64-bit little-endian ELF"),
        (
            "truncated",
            good[..good.len() - 100].to_vec(),
            "truncated or malformed",
        ),
        ("no .nv_fatbin", no_fatbin_section, "no .nv_fatbin section"),
        (
            "entry past its fat binary",
            elf(&past_its_fatbin),
            "malformed entry",
        ),
        (
            "fat binary past the section",
            elf(&fat_past_section),
            "runs past the section",
        ),
        (
            "no such architecture",
            good.clone(),
            "no fat binary holds kernels for architecture 75",
        ),
    ];
    for (what, input, expected) in cases {
        let arch = if what == "no such architecture" {
            "75"
        } else {
            "90"
        };
        let (ok, text, out) = prune(dir.path(), &input, arch);
        assert!(!ok, "{what}: should fail");
        assert!(text.contains(expected), "{what}: {text}");
        assert!(!text.contains("Traceback"), "{what}: {text}");
        assert!(out.is_none(), "{what}: nothing written");
    }
}
