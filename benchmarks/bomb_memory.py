"""Peak memory of `vitkit predict` on a decompression bomb and on huge images (``/usr/bin/time -v``).

Writes, into ``--out``: a tiny model (``vit_test``, 3 channels, 16 px), a 16 x 16 PNG (the
baseline), a 68-byte PNG declaring 50000 x 50000 pixels (the bomb), a real 12000 x 12000
PNG (144 Mpx, above the default 100 Mpx limit) and a real 9000 x 9000 JPEG (81 Mpx, under
the limit: decoded at 1/8 scale by ``draft``). Each file is predicted alone in a fresh
process under ``/usr/bin/time -v``; the table gives the exit code and the maximum resident
set size, then the bomb's RSS minus the baseline's.

    python3 benchmarks/bomb_memory.py --out /tmp/bomb
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def bomb_png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def make_inputs(out: Path) -> dict[str, Path]:
    from vitkit.models.hub import save_pretrained
    from vitkit.registry import create_model

    out.mkdir(parents=True, exist_ok=True)
    model = create_model("vit_test", img_size=16, num_classes=3)
    save_pretrained(model, out / "model", extra={"class_names": ["a", "b", "c"], "task": "classification",
                                                 "preprocess": {"img_size": 16, "in_chans": 3,
                                                                "mean": [0.5] * 3, "std": [0.5] * 3}})
    files = {"baseline 16x16 png": out / "small.png", "bomb 50000x50000 png": out / "bomb.png",
             "real 12000x12000 png": out / "big12k.png", "real 9000x9000 jpeg": out / "big9k.jpg"}
    Image.new("RGB", (16, 16), (9, 99, 199)).save(files["baseline 16x16 png"])
    files["bomb 50000x50000 png"].write_bytes(bomb_png(50000, 50000))
    Image.fromarray(np.zeros((12000, 12000), np.uint8)).save(files["real 12000x12000 png"])
    ramp = (np.arange(9000, dtype=np.uint32)[None, :] * 255 // 9000).astype(np.uint8)
    Image.fromarray(np.repeat(ramp, 9000, axis=0)).convert("RGB").save(files["real 9000x9000 jpeg"], quality=80)
    return files


def measure(model_dir: Path, image: Path) -> dict:
    proc = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "vitkit.cli", "predict", str(model_dir),
                           str(image), "--top-k", "1"], capture_output=True, text=True)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    last = [line for line in proc.stderr.splitlines() if line.startswith("vitkit predict")][:1]
    return {"file_bytes": image.stat().st_size, "exit": proc.returncode,
            "max_rss_mb": round(int(rss.group(1)) / 1024, 1) if rss else None, "message": last[0] if last else ""}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="/tmp/vitkit_bomb")
    args = p.parse_args()
    out = Path(args.out)
    files = make_inputs(out)
    rows = {name: measure(out / "model", path) for name, path in files.items()}
    print(f"{'input':<30} {'bytes':>10} {'exit':>5} {'max RSS MB':>11}  message")
    for name, r in rows.items():
        print(f"{name:<30} {r['file_bytes']:>10} {r['exit']:>5} {r['max_rss_mb']:>11}  {r['message'][:110]}")
    base, bomb = rows["baseline 16x16 png"]["max_rss_mb"], rows["bomb 50000x50000 png"]["max_rss_mb"]
    print(f"bomb - baseline: {bomb - base:+.1f} MB")
    (out / "bomb_memory.json").write_text(json.dumps(
        {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
         "command": " ".join([sys.executable, *sys.argv]), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
