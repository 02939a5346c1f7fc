#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz targets into seeds/<target>/.

Each seed is a valid client conversation, so libFuzzer starts from inputs that
reach option parsing and the request pipeline instead of the first magic
check. Rerun after changing the protocol: python3 blocks/fuzz/make_seeds.py
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
IHAVEOPT = 0x49484156454F5054
REQUEST_MAGIC = 0x25609513
C_FIXED_NEWSTYLE, C_NO_ZEROES = 1, 2
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_INFO, OPT_GO = 1, 2, 3, 6, 7
READ, WRITE, DISC, FLUSH, TRIM, WRITE_ZEROES = 0, 1, 2, 3, 4, 6
FUA = 1


def option(opt, data=b""):
    return struct.pack(">QII", IHAVEOPT, opt, len(data)) + data


def info_data(name, infos=()):
    return struct.pack(">I", len(name)) + name + struct.pack(">H", len(infos)) + b"".join(
        struct.pack(">H", i) for i in infos)


def request(cmd, offset=0, length=0, flags=0, cookie=1, payload=b""):
    return struct.pack(">IHHQQI", REQUEST_MAGIC, flags, cmd, cookie, offset, length) + payload


def write(name, data):
    with open(os.path.join(HERE, "seeds", name), "wb") as f:
        f.write(data)


flags = struct.pack(">I", C_FIXED_NEWSTYLE | C_NO_ZEROES)
go = option(OPT_GO, info_data(b"d", (1, 3)))
write("nbd_connection/list_info_abort", flags + option(OPT_LIST) + option(OPT_INFO, info_data(b"d@s", (1,)))
      + option(OPT_INFO, info_data(b"nope")) + option(99, b"xyz") + option(OPT_ABORT))
write("nbd_connection/go_io_disc", flags + go
      + request(WRITE, 4096, 512, FUA, 1, bytes(range(256)) * 2) + request(READ, 4000, 700, 0, 2)
      + request(TRIM, 0, 8192, FUA, 3) + request(WRITE_ZEROES, 100, 50, 0, 4)
      + request(FLUSH, 0, 0, 0, 5) + request(READ, 65535, 2, 0, 6) + request(77, 0, 0, 0, 7)
      + request(DISC))
write("nbd_connection/export_name_pipelined", struct.pack(">I", C_FIXED_NEWSTYLE)
      + option(OPT_EXPORT_NAME, b"d")
      + b"".join(request(WRITE, i * 1024, 1024, 0, i, bytes([i]) * 1024) for i in range(8))
      + b"".join(request(READ, i * 1024, 1024, 0, 100 + i) for i in range(8)))
write("nbd_connection/read_only_writes", flags + option(OPT_GO, info_data(b"d@s"))
      + request(WRITE, 0, 16, 0, 1, b"x" * 16) + request(TRIM, 0, 16, 0, 2) + request(READ, 0, 16, 0, 3))
write("nbd_request/read", request(READ, 1 << 40, 4096, 0, 0x0102030405060708))
write("nbd_request/write_fua", request(WRITE, 512, 512, FUA, 9))
