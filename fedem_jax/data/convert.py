"""``python -m fedem_jax.data.convert TFRECORD_FOLDER ARRAY_RECORD_FOLDER``: rewrite a TFDS folder
prepared as TFRecord in the ArrayRecord format, without TensorFlow (see
:func:`fedem_jax.data.tfds_files.convert_to_array_record`)."""

from __future__ import annotations

import sys

from fedem_jax.data.tfds_files import convert_to_array_record, file_format
from fedem_jax.errors import DataError


def main(argv: list[str] | None = None) -> int:
    """Convert; exit 0, or 1 with one line, 2 on bad usage."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m fedem_jax.data.convert TFRECORD_FOLDER ARRAY_RECORD_FOLDER", file=sys.stderr)
        return 2
    try:
        if file_format(args[0]) != "tfrecord":
            raise DataError(f"{args[0]} is not a TFRecord folder")
        convert_to_array_record(args[0], args[1])
    except (DataError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args[1]} (ArrayRecord)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
