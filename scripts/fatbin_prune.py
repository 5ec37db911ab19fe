"""Keeps one GPU architecture's kernels in a CUDA shared library, so that it travels in fewer pieces.

onnxruntime-gpu's CUDA provider (284 MB) is mostly its `.nv_fatbin` section: one fat binary per compiled file, each
holding a cubin per architecture (sm_75, 80, 86, 89, 90a, 120a). A machine runs one architecture: in every fat
binary that has a cubin for ARCH, the other entries are dropped, the kept ones moved to its start and its size
field lowered; the freed bytes become zeros (which compress to nothing). Offsets of the fat binaries themselves do
not move, so the pointers the library's registration code holds stay right. Fat binaries without an ARCH cubin are
left whole. `cuobjdump -lelf` on the result lists the kept cubins only.

Usage: python3 scripts/fatbin_prune.py SRC DST ARCH     (ARCH: the number in the entry header, 90 for sm_90/sm_90a)
"""
import struct
import sys

MAGIC = 0xBA55ED50


class PruneError(Exception):
    """The library is not what this script understands."""


def section(data, name):
    """(offset, size) of an ELF64 little-endian section."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise PruneError("not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def header(i):
        base = shoff + i * shentsize
        name_at, = struct.unpack_from("<I", data, base)
        offset, size = struct.unpack_from("<QQ", data, base + 0x18)
        return name_at, offset, size

    _, strings, _ = header(shstrndx)
    for i in range(shnum):
        name_at, offset, size = header(i)
        end = data.index(b"\0", strings + name_at)
        if data[strings + name_at:end].decode() == name:
            return offset, size
    raise PruneError(f"no {name} section")


def prune(data, arch):
    """Prunes `data` (a bytearray) in place; returns (fat binaries pruned, bytes freed)."""
    offset, size = section(data, ".nv_fatbin")
    pos, end_of_section, pruned, freed = offset, offset + size, 0, 0
    while pos + 16 <= end_of_section:
        magic, _, header_size, fat_size = struct.unpack_from("<IHHQ", data, pos)
        if magic != MAGIC:
            pos += 8  # fat binaries are 8-byte aligned, padding between them
            continue
        start, end = pos + header_size, pos + header_size + fat_size
        if end > end_of_section:
            raise PruneError(f"a fat binary at {pos:#x} runs past the section")
        entries, at = [], start
        while at < end:
            _, _, entry_header, payload = struct.unpack_from("<HHIQ", data, at)
            entry_arch, = struct.unpack_from("<I", data, at + 28)
            if entry_header < 32 or at + entry_header + payload > end:
                raise PruneError(f"a malformed entry at {at:#x}")
            entries.append((at, entry_header + payload, entry_arch))
            at += entry_header + payload
        kept = b"".join(bytes(data[a:a + n]) for a, n, e in entries if e == arch)
        if kept and len(kept) < fat_size:
            data[start:end] = kept + bytes(fat_size - len(kept))
            struct.pack_into("<Q", data, pos + 8, len(kept))
            pruned += 1
            freed += fat_size - len(kept)
        pos = end
    return pruned, freed


def main():
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    src, dst, arch = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with open(src, "rb") as f:
        data = bytearray(f.read())
    try:
        pruned, freed = prune(data, arch)
    except PruneError as e:
        raise SystemExit(f"{src}: {e}")
    except (struct.error, ValueError, IndexError, UnicodeDecodeError):
        raise SystemExit(f"{src}: truncated or malformed ELF file")
    if pruned == 0:
        raise SystemExit(f"{src}: no fat binary holds kernels for architecture {arch}")
    with open(dst, "wb") as f:
        f.write(data)
    print(f"{dst}: kept architecture {arch} in {pruned} fat binaries, {freed / 1e6:.0f} MB of other kernels zeroed")


if __name__ == "__main__":
    main()
