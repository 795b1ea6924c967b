"""The ``harness`` command line: run benchmarks, report, inspect methods and weights, prepare data."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from harness.environment import PRECISIONS, keep_freed_memory
from harness.errors import UsageError as CliError

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _err(message: str) -> None:
    print(f"harness: {message}", file=sys.stderr)


# ------------------------------------------------------------------------------------------------ run

def parse_sets(items: list[str] | None) -> dict[str, dict[str, str]]:
    """``--set hairflash.noise=buffers`` -> ``{"hairflash": {"noise": "buffers"}}`` (``name:variant.key`` too)."""
    out: dict[str, dict[str, str]] = {}
    for item in items or []:
        target, eq, value = item.partition("=")
        method, dot, key = target.rpartition(".")
        if not eq or not dot or not method or not key:
            raise CliError(f"--set {item!r}: expected METHOD.PARAM=VALUE, e.g. hairflash.noise=buffers")
        out.setdefault(method, {})[key] = value
    return out


def cmd_run(args: argparse.Namespace) -> int:
    from harness import protocol as protocol_mod
    from harness import runner

    try:
        protocol = protocol_mod.load(args.protocol)
    except protocol_mod.ProtocolError as exc:
        raise CliError(str(exc)) from None
    if args.data:
        protocol = protocol.with_data_path(Path(args.data).expanduser().resolve())
    if args.shape_text is not None or args.color_text is not None:
        try:
            protocol = protocol.with_text(args.shape_text, args.color_text)
        except protocol_mod.ProtocolError as exc:
            raise CliError(str(exc)) from None
    if args.limit is not None and args.limit < 1:
        raise CliError("--limit must be at least 1")
    methods = tuple(m for m in args.methods.split(",") if m.strip()) if args.methods is not None else None
    try:
        shard = runner.parse_shard(args.shard)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    out = Path(args.out)
    config = runner.RunConfig(
        protocol=protocol, out=out, methods=methods, device=args.device, precision=args.precision,
        weights_dir=Path(args.weights_dir) if args.weights_dir else None, limit=args.limit, resume=args.resume,
        fill_weights=args.fill_weights, overrides=parse_sets(args.set), shard=shard,
        metrics=not args.no_metrics, report=not args.no_report, progress=not args.quiet, align=args.align,
        paste_back=args.paste_back,
        command=" ".join(shlex.quote(a) for a in ["harness", *sys.argv[1:]]),
        log=(lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr)),
    )
    try:
        summary = runner.run(config)
    except runner.RunRefused as exc:
        _err(f"refused: {exc}")
        return EXIT_USAGE
    if args.fill_weights:
        print("NOTE: filled weights (--fill-weights): outputs are a test of the code path, not a result.")
    skipped = f"  skipped: {summary.skipped}" if summary.skipped else ""
    print(f"run: {out}  ok: {summary.ok}  failed: {summary.failed}{skipped}  pending: {summary.pending}")
    if summary.pending == 0 and config.metrics:
        _print_metrics(out)
        if config.report:
            index = _render_report([out], out / "report")
            print(f"report: {index}")
    return EXIT_OK


def _print_metrics(run_dir: Path) -> None:
    """A console summary: the headline metric per method x task, time, failures, and what was skipped."""
    import pandas as pd

    path = run_dir / "metrics.csv"
    if not path.exists():
        return
    df = pd.read_csv(path)
    ok = df[df["status"].str.startswith("ok")]
    for metric in ("fid", "psnr_gt", "hair_color_de", "clip_text_shape", "clip_text_color", "psnr_rec",
                   "time_median_s", "failures"):
        rows = ok[ok["metric"] == metric]
        if rows.empty:
            continue
        table = rows.pivot_table(index="method", columns="task", values="value", aggfunc="first")
        print(f"\n{metric}:")
        print(table.round(3).to_string())
    skipped = df[df["status"].str.startswith("skipped")]
    if not skipped.empty:
        print()
    tasks = list(dict.fromkeys(df["task"]))
    for status, rows in skipped.groupby("status", sort=False):  # one line per reason: which metrics, for whom
        metrics = ", ".join(dict.fromkeys(rows["metric"]))
        who = []
        for method, group in rows.groupby("method", sort=False):
            where = list(dict.fromkeys(group["task"]))
            who.append(method if len(where) == len(tasks) else f"{method} {'/'.join(where)}")
        print(f"{metrics} [{', '.join(who)}]: {status}")


def _render_report(run_dirs: list[Path], out: Path) -> Path:
    import reports  # the CLI is the composition root: the engine itself never imports reports

    return reports.render(run_dirs, out)


def cmd_report(args: argparse.Namespace) -> int:
    from harness.store import RunStore

    runs = [Path(r) for r in args.runs]
    for r in runs:
        if not RunStore(r).exists():
            raise CliError(f"{r} is not a run directory (no manifest.json)")
        if not (r / "metrics.csv").exists():
            raise CliError(f"{r} has no metrics.csv yet: run `harness metrics {r}` (or finish the run)")
    index = _render_report(runs, Path(args.out))
    print(f"report: {index}")
    return EXIT_OK


def cmd_metrics(args: argparse.Namespace) -> int:
    from harness import environment, metrics
    from harness.store import RunStore
    from harness.weights import WeightStore

    store = RunStore(args.run)
    if not store.exists():
        raise CliError(f"{args.run} is not a run directory (no manifest.json)")
    try:
        device = environment.resolve_device(args.device)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    fill = bool(store.manifest().get("fill_weights"))  # a filled run is evaluated with filled networks too
    environment.set_float32_precision(store.manifest().get("precision", "fp32"))  # as the run computed
    metrics.compute(store.root, WeightStore(args.weights_dir, fill=fill), device=device, progress=not args.quiet)
    _print_metrics(store.root)
    return EXIT_OK


# ------------------------------------------------------------------------------------------------ inspect

def methods_listing(weights_dir: str | None = None) -> dict:
    from harness import plugins
    from harness.method import params_dict
    from harness.weights import WeightStore

    store = WeightStore(weights_dir)
    out = []
    for name, cls in sorted(plugins.method_classes().items()):
        entry = {"name": name, "plugin": cls.plugin, "description": cls.description or
                 ((cls.__doc__ or "").strip().splitlines() or [""])[0], "variants": list(cls.variants),
                 "default_variant": cls.default_variant, "requires": sorted(cls.requires),
                 "batch_size": cls.batch_size, "accepts_text": sorted(cls.accepts_text)}
        try:
            method = cls()
            entry["params"] = params_dict(method.params)
            ckpts = method.checkpoints()
            entry["checkpoints"] = [store.status(c).as_dict() for c in ckpts]
            entry["weights_ready"] = not store.missing(ckpts)
        except Exception as exc:  # a method class that cannot even be constructed is reported
            entry["error"] = f"{type(exc).__name__}: {exc}"
        out.append(entry)
    broken = [{"plugin": b.name, "target": b.target, "error": b.error} for b in plugins.broken]
    return {"methods": out, "broken_plugins": broken}


def cmd_methods(args: argparse.Namespace) -> int:
    listing = methods_listing(args.weights_dir)
    if args.json:
        print(json.dumps(listing, indent=2, default=str))
        return EXIT_OK
    for m in listing["methods"]:
        variants = f"  variants: {', '.join(m['variants'])} (default {m['default_variant']})" if m["variants"] else ""
        ready = "ready" if m.get("weights_ready") else "needs weights"
        if not m.get("checkpoints"):
            ready = "weight-free"
        text = f"  text: {', '.join(m['accepts_text'])}" if m.get("accepts_text") else ""
        print(f"{m['name']:<14} [{m['plugin']}] {ready}{variants}{text}\n    {m['description']}")
        for c in m.get("checkpoints", []):
            print(f"    - {c['filename']}: {c['state']}")
    for b in listing["broken_plugins"]:
        print(f"BROKEN plugin {b['plugin']} ({b['target']}): {b['error']}")
    return EXIT_OK


def cmd_weights(args: argparse.Namespace) -> int:
    from harness import plugins
    from harness.weights import WeightStore, checkpoint_registry

    store = WeightStore(args.weights_dir)
    registry = checkpoint_registry(plugins.method_classes(), plugins.extra_checkpoints())
    statuses = [store.status(c, verify_hash=args.verify) for c in registry]
    if args.json:
        print(json.dumps({"search_dirs": [str(d) for d in store.search_dirs],
                          "checkpoints": [s.as_dict() for s in statuses]}, indent=2))
        return EXIT_OK
    print("searched, in order: " + ", ".join(str(d) for d in store.search_dirs))
    for s in statuses:
        c = s.checkpoint
        where = f" -> {s.path}" if s.path else ""
        print(f"{s.state:<11} {c.filename:<34} {c.purpose} (used by {', '.join(c.used_by) or '-'}){where}")
        if s.state != "found":
            print(f"            source: {c.source}")
            if c.download:
                print(f"            `harness weights download` fetches it from: {', '.join(c.download)}")
    return EXIT_OK


def weights_to_fetch(methods: str | None, metrics: bool) -> list:
    """The registry's checkpoints for ``--methods A,B:variant`` and ``--metrics`` (neither: every known file)."""
    from harness import download, plugins
    from harness.method import parse_spec
    from harness.weights import checkpoint_registry

    classes = plugins.method_classes()
    registry = checkpoint_registry(classes, plugins.extra_checkpoints())
    chosen = []
    for spec in (methods or "").split(","):
        if not spec.strip():
            continue
        name, variant = parse_spec(spec)
        if name not in classes:
            raise CliError(f"--methods: unknown method {name!r} (known: {', '.join(sorted(classes))})")
        try:
            chosen += list(classes[name](variant=variant).checkpoints())
        except ValueError as exc:
            raise CliError(f"--methods: {exc}") from None
    return download.select(registry, chosen, metrics, everything=not methods and not metrics)


def cmd_weights_download(args: argparse.Namespace) -> int:
    from harness import download
    from harness.weights import WeightStore

    try:
        mirrors = download.parse_mirrors(args.mirror or [])
    except ValueError as exc:
        raise CliError(str(exc)) from None
    checkpoints = weights_to_fetch(args.methods, args.metrics)
    searched = WeightStore(args.weights_dir).search_dirs
    root = Path(args.dir).expanduser() if args.dir else searched[0]
    store = WeightStore(root)
    store.search_dirs += [d for d in searched if d not in store.search_dirs]
    print(f"downloading {len(checkpoints)} file(s) into {root}", file=sys.stderr)
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    outcomes = download.fetch_all(checkpoints, root, store, progress=not args.quiet, mirrors=mirrors, log=log)
    print(download.summary(outcomes))
    if root not in WeightStore().search_dirs and any(o.state == "fetched" for o in outcomes):
        print(f"note: {root} is not searched by default: pass --weights-dir {root} or add it to $HARNESS_WEIGHTS")
    return EXIT_FAIL if any(o.state in ("failed", "no source") for o in outcomes) else EXIT_OK


# ------------------------------------------------------------------------------------------------ parity

def cmd_parity(args: argparse.Namespace) -> int:
    from harness import plugins
    from harness.parity import Fixture, check

    adapters = plugins.parity_adapters()
    all_ok = True
    for directory in args.fixtures:
        path = Path(directory)
        if not (path / "spec.json").is_file():
            _err(f"{path}: not a fixture folder (no spec.json)")
            all_ok = False
            continue
        fixture = Fixture.load(path)
        adapter = adapters.get(fixture.name)
        if adapter is None:
            print(f"{fixture.name} - - - FAIL  (no implementation registered for fixture {fixture.name!r}; "
                  f"known: {', '.join(sorted(adapters))})")
            all_ok = False
            continue
        for result in check(fixture, adapter):
            print(result.line(), flush=True)
            all_ok &= result.ok
    return EXIT_OK if all_ok else EXIT_FAIL


# ------------------------------------------------------------------------------------------------ data

def cmd_data_synth(args: argparse.Namespace) -> int:
    from harness import synthetic

    if args.n < 1 or args.size < 16:
        raise CliError("--n must be >= 1 and --size >= 16")
    items = synthetic.generate(args.n, args.size, args.seed, Path(args.out))
    print(f"wrote {len(items)} portraits ({args.size}x{args.size}) to {args.out}")
    return EXIT_OK


def cmd_data_align(args: argparse.Namespace) -> int:
    from harness import align

    results = align.align_folder(Path(args.src), Path(args.dst), align.AlignParams(output_size=args.size))
    errors = [r for r in results if not r.ok]
    for r in errors:
        print(f"error: {r.source}: {r.error}", file=sys.stderr)
    print(f"aligned {len(results) - len(errors)} of {len(results)} image(s) into {args.dst}")
    return EXIT_OK if len(errors) < len(results) else EXIT_FAIL


def cmd_data_paste_back(args: argparse.Namespace) -> int:
    from PIL import Image

    from harness import align

    transform = Path(args.transform) if args.transform else Path(args.result).with_suffix(".align.json")
    if not transform.is_file():
        raise CliError(f"transform {transform} not found (written by `harness data align`; pass --transform)")
    pasted = align.paste_back(Image.open(args.result), transform, Image.open(args.original))
    pasted.save(args.out)
    print(f"wrote {args.out}")
    return EXIT_OK


# ------------------------------------------------------------------------------------------------ scaffold

def cmd_new_method(args: argparse.Namespace) -> int:
    from harness import scaffold

    try:
        files = scaffold.write_plugin(args.name, Path(args.out))
    except ValueError as exc:
        raise CliError(str(exc)) from None
    print(f"wrote plugin package {args.out}:")
    for f in files:
        print(f"  {f}")
    print(f"install it with: pip install -e {args.out}   then: harness methods")
    return EXIT_OK


# ------------------------------------------------------------------------------------------------ parser

def build_parser(with_trainers: bool = True) -> argparse.ArgumentParser:
    """The argument parser; ``with_trainers=False`` skips loading plugins for the train verb (fast --help)."""
    parser = argparse.ArgumentParser(prog="harness", description="A fair, reproducible benchmark of hair-transfer "
                                     "methods: same images, protocol, device and metrics for every method.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run methods over a protocol and write metrics and a report",
                       description="Run the chosen methods on the same device over every task variant of the "
                       "protocol, then compute metrics and write the report into OUT/report.")
    p.add_argument("--methods", metavar="A,B", help="comma-separated methods (name or name:variant); default: "
                   "every method that can run here")
    p.add_argument("--protocol", default="synthetic", metavar="NAME|PATH",
                   help="built-in protocol name (synthetic, smoke, celebahq) or a .toml file (default: synthetic)")
    p.add_argument("--out", required=True, metavar="DIR", help="run directory")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="float32 arithmetic on CUDA: fp32 (default; TF32 off, as the published numbers) or tf32 "
                        "(faster matmuls/convolutions on Ampere+, ~1e-3 relative); recorded in the manifest")
    p.add_argument("--weights-dir", metavar="DIR", help="directory with checkpoint files (see `harness weights`)")
    p.add_argument("--data", metavar="DIR", help="image folder for folder/triplet protocols (e.g. celebahq)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N triplets")
    p.add_argument("--shape-text", metavar="PROMPT", help='the shape role of every triplet as text, e.g. "afro '
                   'hairstyle" (methods without text input skip those items; see README, Text references)')
    p.add_argument("--color-text", metavar="PROMPT", help='the color role of every triplet as text, e.g. "purple '
                   'hair" (on synthetic data a palette colour name gets a ground truth)')
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in OUT")
    p.add_argument("--set", action="append", metavar="METHOD.PARAM=VALUE",
                   help="override a method parameter (repeatable), e.g. --set hairflash.noise=buffers")
    p.add_argument("--align", action="store_true",
                   help="FFHQ-align each photo of --data first (dlib 68 landmarks; transforms in OUT/aligned/); a "
                        "photo with no face or several faces fails its items with the reason")
    p.add_argument("--paste-back", action="store_true",
                   help="with --align: also write every result pasted back into its original photo "
                        "(OUT/pasted/<method>/<task>/<triplet>.png)")
    p.add_argument("--fill-weights", action="store_true",
                   help="TEST SWITCH: fill every network by the parity rule instead of loading checkpoints; "
                   "results are marked 'filled weights: not a result'")
    p.add_argument("--shard", metavar="K/N", help="run only shard K of N (default: torchrun's RANK/WORLD_SIZE)")
    p.add_argument("--no-metrics", action="store_true", help="skip metrics (and the report)")
    p.add_argument("--no-report", action="store_true", help="skip the HTML report")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("report", help="write a report for one or more runs",
                       description="Tables (CSV, Markdown, LaTeX, HTML), plots and image grids for one or more "
                       "finished runs; several runs are merged into one comparison.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", required=True, metavar="DIR")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("metrics", help="(re)compute the metrics of a finished run",
                       description="Compute metrics.csv and per_item.csv of a run, e.g. after adding the "
                       "Inception or CLIP weights.")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--device", default="auto")
    p.add_argument("--weights-dir", metavar="DIR")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_metrics)

    p = sub.add_parser("methods", help="list installed methods", description="List every method plugin, its "
                       "variants, parameters, weight files and whether they are present.")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--weights-dir", metavar="DIR")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("weights", help="show every known checkpoint file and whether it is found",
                       description="The registry of checkpoint files: found / missing / wrong size / wrong hash, "
                       "and where the harness looked (--weights-dir, $HARNESS_WEIGHTS, the user cache).")
    p.add_argument("--json", action="store_true")
    p.add_argument("--weights-dir", metavar="DIR")
    p.add_argument("--verify", action="store_true", help="also check sha256 hashes (reads every file)")
    p.set_defaults(func=cmd_weights)
    wsub = p.add_subparsers(dest="weights_command", metavar="VERB")
    d = wsub.add_parser("download", help="fetch the known files from their official sources",
                        description="Fetch each selected checkpoint from its official source (direct HTTPS, Google "
                        "Drive, the Hugging Face Hub) into DIR/<key>/<filename>: resumes partial files, checks the "
                        "known size and sha256, writes atomically, skips files already there. Says what could not be "
                        "fetched and why (offline, HTTP errors, form-gated files); exit 1 if anything is missing. "
                        "Nothing else in the harness downloads.")
    d.add_argument("--methods", metavar="A,B", help="only these methods' files (name or name:variant)")
    d.add_argument("--metrics", action="store_true", help="the metrics' files (Inception, CLIP, LPIPS, BiSeNet)")
    d.add_argument("--dir", metavar="DIR", help="destination (default: the first weight directory searched: "
                   "--weights-dir, $HARNESS_WEIGHTS, else the user cache)")
    d.add_argument("--weights-dir", metavar="DIR", default=argparse.SUPPRESS,
                   help="also count files found here as already there (and the default --dir)")
    d.add_argument("--mirror", action="append", metavar="PREFIX=REPLACEMENT",
                   help="rewrite source URLs starting with PREFIX (repeatable), e.g. a local mirror; "
                        "https://huggingface.co=URL sets the Hub endpoint")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=cmd_weights_download)

    p = sub.add_parser("parity", help="check our networks against official parity fixtures",
                       description="Load each fixture, fill our module by its rule, run its cases; prints "
                       "'name case rel_err tol ok|FAIL' per case. Exit 0 only if all pass.")
    p.add_argument("fixtures", nargs="+", metavar="DIR")
    p.set_defaults(func=cmd_parity)

    p = sub.add_parser("new-method", help="write an installable plugin package for a new method",
                       description="Write a plugin package (pyproject entry point, method module, a test) that "
                       "`pip install -e DIR` makes appear in `harness methods`.")
    p.add_argument("name", help="method name (a Python identifier, e.g. my_method)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.set_defaults(func=cmd_new_method)

    train = sub.add_parser("train", help="train a method's networks (trainers come from plugins)",
                           description="Train a network of a method plugin, e.g. `harness train hairflash-blending "
                           "--variant final --data DIR --out CKPT`. Single process on CPU, or several GPUs under "
                           "torchrun.")
    tsub = train.add_subparsers(dest="trainer", required=True, metavar="TRAINER")
    from harness import plugins

    for name, (add_arguments, run) in sorted(plugins.trainers().items() if with_trainers else ()):
        p = tsub.add_parser(name, help=(run.__doc__ or "").strip().splitlines()[0] if run.__doc__ else None,
                            description=(run.__doc__ or "").strip() or None)
        add_arguments(p)
        p.set_defaults(func=run)

    data = sub.add_parser("data", help="prepare data: synthetic portraits, face alignment, paste-back",
                          description="Data preparation verbs.")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="VERB")
    p = dsub.add_parser("synth", help="generate synthetic portraits with label maps",
                        description="Write N procedural portraits (images/, labels/, specs.jsonl) to OUT.")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, metavar="DIR")
    p.set_defaults(func=cmd_data_synth)
    p = dsub.add_parser("align", help="FFHQ-align real photos (dlib 68 landmarks)",
                        description="Align every photo in SRC (a folder or one file) the FFHQ way and write "
                        "DST/<name>.png plus DST/<name>.align.json (the transform, for paste-back).")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--size", type=int, default=1024, help="output size (default 1024)")
    p.set_defaults(func=cmd_data_align)
    p = dsub.add_parser("paste-back", help="paste an aligned result back into the original photo",
                        description="Warp an aligned result back into the original photo using the transform "
                        "written by `harness data align`.")
    p.add_argument("result", help="aligned result image")
    p.add_argument("original", help="the original photo")
    p.add_argument("--transform", help="transform JSON (default: RESULT with .align.json)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_data_paste_back)
    return parser


def _version() -> str:
    from harness import __version__

    return __version__


HEAVY_COMMANDS = frozenset({"run", "metrics", "train"})


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(with_trainers=argv[:1] == ["train"])
    args = parser.parse_args(argv)
    if args.command in HEAVY_COMMANDS:
        keep_freed_memory()  # large activations are reused call after call: don't hand them back to the kernel
    try:
        return args.func(args)
    except CliError as exc:
        _err(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        _err("interrupted; `harness run --resume` continues a run")
        return 130


if __name__ == "__main__":
    sys.exit(main())
