"""How fast the release readers read, and in how much memory, on a 2,000-study stand-in of each release.

    python bench/read_releases.py [--studies 2000] [--image-size 256] [--workdir runs/bench-releases] [--smoke]

Writes a stand-in of each release in its shipped layout (`python -m dataprep.synthetic --layout ...`; kept in
--workdir for the next run) and reads each in a fresh process with `dataprep.releases.read`, as `python -m dataprep`
does before it builds: CheXpert Plus from its CSV and PNG tree, MIMIC-CXR-JPG with its reports read from
mimic-cxr-reports.zip without extracting it, IU X-ray from NLMCXR_reports.tgz and NLMCXR_png.tgz in one streaming
pass each (every film decoded, scored for the frontal choice and letterboxed to 336 px into a spill folder). Peak RSS
is the reading process's own (ru_maxrss), beside its RSS after imports and the size of the films on disk: memory that
followed the films would grow with the archive. CPU seconds (all threads) are printed beside the wall time: on a
shared machine they are the steadier figure. For IU X-ray it also measures how often the chosen film is the
frontal one the stand-in drew (SYNTHETIC.json), per method. The stand-in films are small (--image-size): real ones
are 2-4k px and decode slower. --smoke: 40 studies of 64 px films.
Per source one line `source=... studies=... studies_per_s=... peak_rss_mib=...`, then one line:
    RESULT chexpert_plus_studies_per_s=... mimic_cxr_studies_per_s=... iu_xray_studies_per_s=... *_peak_rss_mib=...
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("chexpert-plus", "mimic-cxr", "iu-xray")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def write_standin(source: str, root: Path, studies: int, image_size: int) -> None:
    """A stand-in of about `studies` studies (CheXpert Plus and MIMIC-CXR draw 1-3 studies per patient)."""
    marker = root / "SYNTHETIC.json"
    if marker.is_file() and json.loads(marker.read_text()).get("bench") == [studies, image_size]:
        return  # written by an earlier run with the same options
    patients = studies if source == "iu-xray" else max(1, studies // 2)
    args = [str(root), "--layout", source, "--patients", str(patients), "--image-size", str(image_size)]
    command = [sys.executable, "-m", "dataprep.synthetic", *args]
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "bench": [studies, image_size]}))


def film_bytes(source: str, root: Path) -> int:
    if source == "iu-xray":
        return (root / "NLMCXR_png.tgz").stat().st_size
    return sum(p.stat().st_size for p in (root / ("files" if source == "mimic-cxr" else "PNG")).rglob("*.*"))


def child(source: str, root: Path, work: Path) -> None:
    """In a fresh process: read the release once; print what was measured as JSON."""
    import dataprep.chexpert
    import dataprep.releases.iu_xray
    import dataprep.releases.mimic  # noqa: F401 - imported before timing: the readers' imports are not reading
    from dataprep.releases import read

    base = peak_rss_mib()
    start, cpu = time.perf_counter(), time.process_time()
    release = read(source, root, work_dir=work, image_size=336, workers=os.cpu_count() or 1, progress=False)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    result = {"studies": len(release.studies) + len(release.rejects), "seconds": seconds, "cpu_seconds": cpu,
              "base_rss_mib": base, "peak_rss_mib": peak_rss_mib()}  # fmt: skip
    if source == "iu-xray":
        truth = json.loads((root / "SYNTHETIC.json").read_text())["frontal"]
        picked = {s.study_id: s.images[0][0] for s in release.studies if s.study_id in truth}
        right = sum(f"{truth[sid]}.png" == name for sid, name in picked.items())
        result["frontal_right"] = right / max(len(picked), 1)
        result["frontal_choice"] = release.summary["frontal_choice"]
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=2000, help="studies in each stand-in")
    parser.add_argument("--image-size", type=int, default=256, help="width of the stand-ins' films in pixels")
    parser.add_argument("--workdir", help="where the stand-ins are written and kept (default: a temporary folder)")
    parser.add_argument("--smoke", action="store_true", help="40 studies of 64 px films")
    parser.add_argument("--child", nargs=3, metavar=("SOURCE", "ROOT", "WORK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), Path(args.child[2]))
        return
    if args.smoke:
        args.studies, args.image_size = 40, 64
    if args.studies < 1 or args.image_size < 64:
        parser.error("--studies must be >= 1 and --image-size >= 64")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        results = {}
        for source in SOURCES:
            root = work / source
            write_standin(source, root, args.studies, args.image_size)
            env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
            command = [sys.executable, __file__, "--child", source, str(root), str(Path(tmp) / f"spill-{source}")]
            done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            result["films_mib"] = film_bytes(source, root) / 2**20
            results[source] = result
            extra = f" frontal_right={result['frontal_right']:.3f} by={result['frontal_choice']}" \
                if "frontal_right" in result else ""  # fmt: skip
            print(f"source={source} studies={result['studies']} seconds={result['seconds']:.1f} "
                  f"studies_per_s={result['studies'] / result['seconds']:.0f} cpu_seconds={result['cpu_seconds']:.1f} "
                  f"rss_after_imports_mib={result['base_rss_mib']:.0f} peak_rss_mib={result['peak_rss_mib']:.0f} "
                  f"films_on_disk_mib={result['films_mib']:.0f}{extra}")  # fmt: skip
    keys = []
    for source, r in results.items():
        name = source.replace("-", "_")
        keys += [f"{name}_studies={r['studies']}", f"{name}_studies_per_s={r['studies'] / r['seconds']:.0f}",
                 f"{name}_peak_rss_mib={r['peak_rss_mib']:.0f}"]  # fmt: skip
    keys.append(f"iu_xray_frontal_right={results['iu-xray']['frontal_right']:.3f}")
    print("RESULT " + " ".join(keys))


if __name__ == "__main__":
    main()
