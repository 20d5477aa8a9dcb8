"""Writes `minimal_go.elf`: an ELF64 executable with the three sections sockspan reads of a Go
program (`.go.buildinfo` with go1.19.8, `.gopclntab` naming runtime.newproc1 and
net/http.(*Request).write, `.text` whose newproc1 ends in a RET). Run from this directory."""
import struct

TEXT_ADDR = 0x401000
text = bytes([0x90] * 16 + [0xB8, 0xC3, 0xC3, 0xC3, 0xC3, 0xC3] + [0xCC] * 2 + [0x90] * 8)  # nops, mov, ret, int3; nops
names = b"runtime.newproc1\0net/http.(*Request).write\0"
funcs = [(0, 0), (24, len(b"runtime.newproc1\0"))]
functab = b""
n = len(funcs)
for i, (entry, _) in enumerate(funcs):
    functab += struct.pack("<II", entry, 8 * (n + 1) + 8 * i)
functab += struct.pack("<II", len(text), 0)
for entry, name_off in funcs:
    functab += struct.pack("<II", entry, name_off)
header = struct.pack("<IBBBB", 0xFFFFFFF0, 0, 0, 1, 8)
header += struct.pack("<8Q", n, 0, TEXT_ADDR, 72, 0, 0, 0, 72 + len(names))
pclntab = header + names + functab
buildinfo = b"\xff Go buildinf:" + bytes([8, 2]) + bytes(16) + bytes([8]) + b"go1.19.8" + bytes(8)
shstrtab = b"\0.text\0.go.buildinfo\0.gopclntab\0.shstrtab\0"

sections = [(".text", text, 1, 6, TEXT_ADDR), (".go.buildinfo", buildinfo, 1, 3, 0x500000),
            (".gopclntab", pclntab, 1, 2, 0x600000), (".shstrtab", shstrtab, 3, 0, 0)]
body = b""
offsets = []
for _, data, _, _, _ in sections:
    offsets.append(64 + len(body))
    body += data
    body += bytes((-len(body)) % 8)
shoff = 64 + len(body)
ehdr = b"\x7fELF\x02\x01\x01" + bytes(9)
ehdr += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, TEXT_ADDR, 0, shoff, 0, 64, 56, 0, 64, 5, 4)
shdrs = bytes(64)
for (name, data, kind, flags, addr), off in zip(sections, offsets):
    shdrs += struct.pack("<IIQQQQIIQQ", shstrtab.index(name.encode()), kind, flags, addr, off,
                         len(data), 0, 0, 16, 0)
open("minimal_go.elf", "wb").write(ehdr + body + shdrs)
