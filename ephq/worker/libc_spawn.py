"""posix_spawn(3) through ctypes, which lets the GIL go for the call (spawning.py says when a
worker uses it, and why). Starts the child as spawning.spawn_holding_gil does."""

from __future__ import annotations

import array
import ctypes
import itertools
import os
from collections.abc import Sequence
from typing import Any

from .spawning import RESET_SIGNALS, Dups

# glibc's and musl's values for Linux (spawn.h): Python's os module exports neither the flags
# nor a way to set them alone.
_POSIX_SPAWN_SETSIGDEF = 0x04
_POSIX_SPAWN_SETSIGMASK = 0x08
_POSIX_SPAWN_SETSID = 0x80
# Room for the opaque types, larger than glibc's and musl's (336, 80 and 128 bytes on 64-bit
# Linux), in 8-byte words so that they are aligned as the C types are.
_ATTR_WORDS = 128
_FILE_ACTIONS_WORDS = 64
_SIGSET_WORDS = 32
# An unsigned long: as wide as a pointer on Linux (checked as a LibcSpawn is made).
_POINTER_TYPECODE = "L"


class LibcSpawn:
    """posix_spawn(3) called through ctypes, which lets the GIL go for the call. The attributes
    (session, signals) are the same for every child: made once, read by every call."""

    def __init__(self) -> None:
        if array.array(_POINTER_TYPECODE).itemsize != ctypes.sizeof(ctypes.c_void_p):
            raise TypeError("no array type as wide as a pointer here")
        libc = ctypes.CDLL(None, use_errno=True)
        pointer = ctypes.c_void_p
        self._spawn = libc.posix_spawn
        self._actions_init = libc.posix_spawn_file_actions_init
        self._add_dup2 = libc.posix_spawn_file_actions_adddup2
        self._actions_destroy = libc.posix_spawn_file_actions_destroy
        argument_types: list[Any] = [ctypes.POINTER(ctypes.c_int), ctypes.c_char_p]
        self._spawn.argtypes = argument_types + [pointer] * 4
        self._add_dup2.argtypes = [pointer, ctypes.c_int, ctypes.c_int]
        self._actions_init.argtypes = self._actions_destroy.argtypes = [pointer]
        for made in (self._spawn, self._actions_init, self._add_dup2, self._actions_destroy):
            made.restype = ctypes.c_int
        self._attributes = (ctypes.c_uint64 * _ATTR_WORDS)()
        self._defaults = (ctypes.c_uint64 * _SIGSET_WORDS)()
        self._mask = (ctypes.c_uint64 * _SIGSET_WORDS)()
        flags = _POSIX_SPAWN_SETSIGDEF | _POSIX_SPAWN_SETSIGMASK | _POSIX_SPAWN_SETSID
        steps: list[tuple[Any, tuple[object, ...]]] = [
            (libc.sigemptyset, (self._defaults,)),
            (libc.sigemptyset, (self._mask,)),
            *((libc.sigaddset, (self._defaults, int(s))) for s in RESET_SIGNALS),
            (libc.posix_spawnattr_init, (self._attributes,)),
            (libc.posix_spawnattr_setsigdefault, (self._attributes, self._defaults)),
            (libc.posix_spawnattr_setsigmask, (self._attributes, self._mask)),
            (libc.posix_spawnattr_setflags, (self._attributes, ctypes.c_short(flags))),
        ]
        for step, arguments in steps:
            if step(*arguments) != 0:
                raise OSError(f"{step.__name__} failed")
        self._attributes_pointer = ctypes.cast(self._attributes, pointer)

    def __call__(self, path: str, argv: Sequence[str], env: dict[bytes, bytes], dups: Dups) -> int:
        actions = (ctypes.c_uint64 * _FILE_ACTIONS_WORDS)()
        err = self._actions_init(actions)
        if err:
            raise OSError(err, os.strerror(err))
        try:
            for fd, target in dups:
                err = self._add_dup2(actions, fd, target)
                if err:
                    raise OSError(err, os.strerror(err))
            # Kept in these names until the call returns: the child reads them.
            arguments = _StringArray([os.fsencode(argument) + b"\0" for argument in argv])
            environment = _StringArray([k + b"=" + v + b"\0" for k, v in env.items()])
            pid = ctypes.c_int()
            err = self._spawn(
                ctypes.byref(pid),
                os.fsencode(path),
                actions,
                self._attributes_pointer,
                arguments.address,
                environment.address,
            )
        finally:
            self._actions_destroy(actions)
        if err:
            raise OSError(err, os.strerror(err), path)
        return pid.value


class _StringArray:
    """A NULL-ended array of pointers to C strings, as argv and envp are, from strings that
    each end with their NUL. They are copied end to end into one buffer, and the pointers made
    from their offsets: an array of c_char_p converts each string on its own (19-30 µs for 48
    variables, against 9)."""

    def __init__(self, strings: list[bytes]) -> None:
        joined = b"".join(strings)
        if joined.count(b"\0") != len(strings):  # a NUL inside one, which would end it early
            raise ValueError("embedded null byte in a handler's argument or environment")
        self._buffer = ctypes.create_string_buffer(joined, len(joined))
        starts = itertools.accumulate(map(len, strings), initial=ctypes.addressof(self._buffer))
        self._pointers = array.array(_POINTER_TYPECODE, starts)
        self._pointers[-1] = 0  # (the last start is past the end: the NULL that ends it)
        self.address: int = self._pointers.buffer_info()[0]
