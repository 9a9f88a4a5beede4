"""Where a loaded eBPF program spends its time, by source line.

    perf record -e cpu-clock -F 25000 -p GATEWAY_PID -o perf.data -- sleep 6
    python3 gateway-ebpf/loader-probe/bpf_lines.py PROG_ID perf.data [TOP]

(PROG_ID from `bpftool prog show`, e.g. the gateway's `sock_send`; run as
root while the program is still loaded.) perf's samples carry the JIT'd
instruction address; the program's `jited_line_info` maps JIT addresses to
its BTF line records, whose file and line numbers come from its BTF string
table. Only samples inside this program's functions (its subprograms and
callbacks included) count. Prints the TOP (default 40) lines with their
share of the program's samples. The bpftool on these machines has no
libbfd, so `bpftool prog dump jited linum` cannot do this.
"""

from __future__ import annotations

import bisect
import collections
import ctypes
import struct
import subprocess
import sys

SYS_BPF = 321  # x86_64
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_BTF_GET_FD_BY_ID = 19
# Offsets in struct bpf_prog_info (include/uapi/linux/bpf.h).
INFO_SIZE = 256
OFF_NR_JITED_KSYMS = 104
OFF_JITED_KSYMS = 112
OFF_BTF_ID = 128
OFF_NR_LINE_INFO = 148
OFF_LINE_INFO = 152
OFF_NR_JITED_LINE_INFO = 168

libc = ctypes.CDLL(None, use_errno=True)


def bpf(cmd: int, attr: bytes) -> int:
    buf = ctypes.create_string_buffer(attr, 128)
    rc = libc.syscall(SYS_BPF, cmd, buf, 128)
    if rc < 0:
        raise OSError(ctypes.get_errno(), f"bpf({cmd})")
    return rc


def object_info(fd: int, size: int, fill=None) -> bytes:
    buf = ctypes.create_string_buffer(size)
    if fill:
        fill(buf)
    bpf(BPF_OBJ_GET_INFO_BY_FD, struct.pack("IIQ", fd, size, ctypes.addressof(buf)))
    return buf.raw


def btf_strings(btf_id: int) -> bytes:
    fd = bpf(BPF_BTF_GET_FD_BY_ID, struct.pack("I", btf_id))
    size = struct.unpack_from("I", object_info(fd, 32), 8)[0]
    raw = ctypes.create_string_buffer(size)
    object_info(fd, 32, lambda b: struct.pack_into("QI", b, 0, ctypes.addressof(raw), size))
    data = raw.raw
    hdr_len = struct.unpack_from("I", data, 4)[0]
    str_off, str_len = struct.unpack_from("II", data, 16)
    return data[hdr_len + str_off : hdr_len + str_off + str_len]


def program_lines(prog_id: int):
    """(JIT address, file, line) of each line record, sorted, and the
    program's functions as (start, length)."""
    fd = bpf(BPF_PROG_GET_FD_BY_ID, struct.pack("III", prog_id, 0, 0))
    first = object_info(fd, INFO_SIZE)
    nr_ksyms, nr_lens = struct.unpack_from("II", first, OFF_NR_JITED_KSYMS)
    btf_id = struct.unpack_from("I", first, OFF_BTF_ID)[0]
    nr_lines = struct.unpack_from("I", first, OFF_NR_LINE_INFO)[0]
    nr_jited, rec_size, jited_rec_size = struct.unpack_from("III", first, OFF_NR_JITED_LINE_INFO)
    ksyms = (ctypes.c_uint64 * nr_ksyms)()
    lens = (ctypes.c_uint32 * nr_lens)()
    lines = ctypes.create_string_buffer(nr_lines * rec_size)
    jited = (ctypes.c_uint64 * nr_jited)()

    def fill(buf):
        struct.pack_into("II", buf, OFF_NR_JITED_KSYMS, nr_ksyms, nr_lens)
        struct.pack_into("QQ", buf, OFF_JITED_KSYMS, ctypes.addressof(ksyms), ctypes.addressof(lens))
        struct.pack_into("I", buf, OFF_NR_LINE_INFO, nr_lines)
        struct.pack_into("QQ", buf, OFF_LINE_INFO, ctypes.addressof(lines), ctypes.addressof(jited))
        struct.pack_into("III", buf, OFF_NR_JITED_LINE_INFO, nr_jited, rec_size, jited_rec_size)

    object_info(fd, INFO_SIZE, fill)
    strings = btf_strings(btf_id)

    def text(off: int) -> str:
        return strings[off : strings.index(b"\0", off)].decode(errors="replace")

    out = []
    for i in range(min(nr_lines, nr_jited)):
        _, file_off, _, line_col = struct.unpack_from("IIII", lines.raw, i * rec_size)
        out.append((jited[i], text(file_off).rsplit("/", 1)[-1], line_col >> 10))
    out.sort()
    return out, list(zip(ksyms, lens))


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    lines, functions = program_lines(int(sys.argv[1]))
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 40
    addrs = [a for a, _, _ in lines]
    samples = subprocess.run(
        ["perf", "script", "-i", sys.argv[2], "-F", "ip"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    hist: collections.Counter = collections.Counter()
    inside = 0
    for field in samples:
        ip = int(field, 16)
        if not any(start <= ip < start + length for start, length in functions):
            continue
        inside += 1
        i = bisect.bisect_right(addrs, ip) - 1
        if i >= 0:
            _, file, line = lines[i]
            hist[(file, line)] += 1
    print(f"{len(samples)} samples, {inside} in program {sys.argv[1]}")
    for (file, line), count in hist.most_common(top):
        print(f"{count:7d} {100 * count / max(inside, 1):5.1f}%  {file}:{line}")


if __name__ == "__main__":
    main()
