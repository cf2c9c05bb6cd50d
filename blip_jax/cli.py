"""What every `python -m blip_jax.*` command shares: a user error ends in one `error: ...` line
on stderr and exit status 2; a bug keeps its traceback.

A user error is a problem with what the user gave (a flag, a config key, a path, an input
file), recognised without a class hierarchy the library would have to adopt:
  - `UserError`, raised by the commands' own argument checks;
  - a ValueError or ImportError raised by blip_jax's own code: the library's convention for a
    bad input or a missing optional dependency, each raised with a message that names the thing
    (ImageError, DataError, CheckpointMismatchError, CapFiltConfigError, model ConfigError and
    the plain config-value checks all derive from ValueError). The same classes raised inside
    jax, numpy or orbax are bugs of ours and keep their traceback;
  - a path that cannot be used (missing, not a directory, no permission), wherever raised;
  - the trainer's ConfigKeyError (a KeyError).
absl commands (`run_absl`) also turn an unknown `--config.KEY` override, which ml_collections
rejects with a bare AttributeError/KeyError before any project code runs, into the project's
own key-check error (naming the valid keys), and a missing --config file into one line.
Both turn on the persistent compilation cache (blip_jax/compilation_cache.py) first; absl
commands (the long ones: train, evaluate, capfilt, the bootstrap experiment) first of all run
malloc on huge pages (blip_jax/allocator.py).
"""

from __future__ import annotations

import functools
import os
import re
import sys
import traceback
from typing import Any, Callable, Optional, Sequence

from blip_jax import allocator, compilation_cache

USER_ERROR_EXIT = 2

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError,
                PermissionError)
# (module, class) of user errors that are not ValueErrors. Looked up in sys.modules: an
# exception of a class whose module was never imported cannot be in flight, and importing it
# here would load jax into every command's start-up.
_NAMED_USER_ERRORS = (("blip_jax.train.trainer", "ConfigKeyError"),)


class UserError(Exception):
    """A command-line argument that cannot work: the message names it and the fix."""


def _raised_by_blip_jax(e: BaseException) -> bool:
    frames = traceback.extract_tb(e.__traceback__)
    return bool(frames) and os.path.abspath(frames[-1].filename).startswith(_PACKAGE_DIR + os.sep)


def user_error_message(e: BaseException) -> Optional[str]:
    """The message to print for a user error; None for anything else (a bug)."""
    named = any(isinstance(e, getattr(sys.modules[m], c)) for m, c in _NAMED_USER_ERRORS
                if m in sys.modules)
    if isinstance(e, _PATH_ERRORS) and e.filename and e.strerror:
        return f"{e.filename}: {e.strerror}"  # the OS's own error, without "[Errno N]"
    if not (named or isinstance(e, (UserError, *_PATH_ERRORS))
            or (isinstance(e, (ValueError, ImportError)) and _raised_by_blip_jax(e))):
        return None
    if isinstance(e, KeyError) and len(e.args) == 1:
        return str(e.args[0])  # str(KeyError) would quote the message
    return str(e)


def report(e: BaseException) -> int:
    """Prints a user error as one `error:` line and returns the exit status; re-raises a bug."""
    message = user_error_message(e)
    if message is None:
        raise e
    print(f"error: {message}", file=sys.stderr, flush=True)
    return USER_ERROR_EXIT


def entry_point(main: Callable[..., int]) -> Callable[..., int]:
    """Decorates an argparse command's `main(argv) -> exit status`: a user error prints one line
    and returns 2 (also when another command or a test calls main in-process)."""

    @functools.wraps(main)
    def wrapped(*args: Any, **kwargs: Any) -> int:
        try:
            compilation_cache.enable()
            return main(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - report() re-raises anything that is not a user error
            return report(e)

    return wrapped


def check_output_dir(path: str, what: str) -> None:
    """A folder the command will create or write into must not be an existing file; checked
    up front so the command fails before loading models or data."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{what} {path!r} is a file, not a directory: give a folder path")


# -- absl commands (train, evaluate, capfilt) --------------------------------------------------

def run_absl(main: Callable[[list[str]], Any],
             config_check: Optional[Callable[[Any], None]] = None) -> None:
    """`absl.app.run(main)` with user errors reported in one line, in flag parsing and in main.

    `config_check(config)` is the command's own key check of the `--config` flag's config
    (raising an error that names the valid keys): it runs right after parsing, before main, and
    explains an unknown `--config.KEY` override that ml_collections rejects while parsing."""
    allocator.reexec_with_huge_pages()  # a process's first act: see blip_jax/allocator.py
    from absl import app

    def parse(argv: list[str]) -> list[str]:
        from absl import flags
        try:
            rest = app.parse_flags_with_usage(argv)
        except (AttributeError, KeyError, OSError):
            _explain_config_flag(argv, config_check)  # raises a user error when it can
            raise
        _check_config_file(argv)
        if config_check is not None and "config" in flags.FLAGS:
            config_check(flags.FLAGS.config)
        return rest

    try:
        compilation_cache.enable()
        app.run(main, flags_parser=parse)
    except Exception as e:  # noqa: BLE001 - report() re-raises anything that is not a user error
        sys.exit(report(e))


def _config_flag_value(argv: Sequence[str]) -> Optional[str]:
    """The value of --config in argv (`--config=V` or `--config V`), None if absent."""
    for i, arg in enumerate(argv):
        m = re.fullmatch(r"--?config(?:=(.*))?", arg)
        if m and m.group(1) is not None:
            return m.group(1)
        if m:
            return argv[i + 1] if i + 1 < len(argv) else None
    return None


def _check_config_file(argv: Sequence[str]) -> None:
    # ml_collections defers a missing file's error to the first use of the config, as a
    # traceback out of main; "path:args" passes args to get_config.
    value = _config_flag_value(argv)
    if value is not None and not os.path.isfile(value.split(":", 1)[0]):
        raise UserError(f"--config={value}: no such config file {value.split(':', 1)[0]!r} "
                        "(the shipped configs are in the repository's configs/ folder)")


def _explain_config_flag(argv: Sequence[str], config_check: Optional[Callable[[Any], None]]) -> None:
    """Raises the user error behind a failed --config parse: a missing file, or the first
    `--config.KEY` override naming a key the config lacks (through config_check when it
    rejects that key, so the message is the project's own; else naming the valid keys)."""
    import ml_collections
    from absl import flags

    _check_config_file(argv)
    value = _config_flag_value(argv)
    if value is None:
        return
    overrides = [m.group(1) for m in (re.match(r"--?(?:no)?config\.([^=]+)", a) for a in argv) if m]
    for name in overrides:
        # A fresh, unlocked copy of the file's config (loaded by the flag's own parser) for each
        # probe: the probe adds the key.
        config = flags.FLAGS["config"].parser.parse(value)
        config.unlock()
        node, parts = config, name.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, ml_collections.ConfigDict):
                raise UserError(f"--config.{name}: config.{'.'.join(parts[:i])} is "
                                f"{node!r}, not a group of keys")
            if part not in node:
                break
            node = node[part]
        else:
            continue  # this override exists: not the one that failed
        node[part] = None
        if config_check is not None:
            try:
                config_check(config)
            except Exception as e:  # noqa: BLE001 - only a user error explains the override
                if user_error_message(e) is not None:
                    raise UserError(f"--config.{name}: {user_error_message(e)}") from None
                raise
        where = ".".join(["config", *parts[:i]])
        raise UserError(f"--config.{name}: unknown config key '{where}.{part}'; valid keys "
                        f"at this level: {sorted(k for k in node.keys() if k != part)}")
