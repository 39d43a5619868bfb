"""CRC-32 arithmetic for updating a zip member's checksum from the changed bytes alone.

CRC-32 is affine over GF(2): changing bytes at one place in a message changes its CRC by
the CRC register of the XOR difference, shifted past the bytes that follow. Shifting by n
zero bytes is multiplication by x^(8n) modulo the CRC polynomial, found by squaring, so the
cost depends on the size of the change, not of the member.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

_POLY = 0xEDB88320
_X0 = 1 << 31


def _multmodp(a: int, b: int) -> int:
    """a * b modulo the CRC-32 polynomial, both in reflected bit order."""
    mask = _X0
    product = 0
    while a:
        if a & mask:
            product ^= b
            a &= ~mask
        mask >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1
    return product


def _x_powers() -> list[int]:
    powers = [_X0 >> 1]
    for _ in range(63):
        powers.append(_multmodp(powers[-1], powers[-1]))
    return powers


_X_2_TO_THE = _x_powers()


def _x8n(nbytes: int) -> int:
    """x^(8 * nbytes) modulo the polynomial."""
    result = _X0
    k = 3
    while nbytes:
        if nbytes & 1:
            result = _multmodp(_X_2_TO_THE[k % 64], result)
        nbytes >>= 1
        k += 1
    return result


def patched_crc32(old_crc: int, length: int, changes: Iterable[tuple[int, bytes, bytes]]) -> int:
    """The CRC-32 of a `length`-byte message after replacing some of its bytes.

    Args:
        old_crc: the message's CRC-32 before the change.
        length: the message's length, which does not change.
        changes: `(position, old_bytes, new_bytes)` for each replaced run.
    """
    crc = old_crc
    for position, old, new in changes:
        if len(old) != len(new) or position < 0 or position + len(new) > length:
            raise ValueError("a change must replace bytes inside the message with as many")
        delta = _xor(old, new)
        register = zlib.crc32(delta) ^ zlib.crc32(bytes(len(delta)))
        crc ^= _multmodp(_x8n(length - position - len(delta)), register)
    return crc


def _xor(old: bytes, new: bytes) -> bytes:
    """Byte-wise XOR of two equal-length byte strings."""
    return (int.from_bytes(old, "little") ^ int.from_bytes(new, "little")).to_bytes(
        len(old), "little"
    )
