"""The catalogue of bad input: every case run as a user runs it (`modarb ARGS`, offline).

Each row is (name, arguments, expected exit, a phrase the one error line must contain). Every case
must end with exactly one `modarb...: error:` line (or `modarb: interrupted` for Ctrl-C) as the
last line of stderr, no traceback, no output folder (nor a hidden half-written one) where the
case asked for one, and every file the user had before exactly as it was (nothing deleted,
moved or changed). Most cases run in this process through the console script's own entry
(`interventions.cli.main`); each kind of failure (argparse, our one-line errors before and inside
an lm-eval run, a refused output folder, a read-only folder, a full disk, lm-eval failing to save,
Ctrl-C) also runs as a real `modarb` process, which proves the installed command ends the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch

from console import run_here
from modarb_tasks.outdir import MANIFEST

BIN = Path(sys.executable).parent
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "leaderboard"
PARALLEL = 4  # processes at a time: each imports torch (and most lm-eval) on a small shared machine
ERROR_LINE = ("modarb: error: ", "modarb: interrupted", "modarb ")  # ours, Ctrl-C's, argparse's `modarb <command>: error: `


def _torchvision_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("torchvision") is not None


@dataclass(frozen=True)
class Case:
    name: str
    argv: tuple[str, ...]  # after `modarb`; {placeholders} are filled from the fixture's paths
    exit: int
    phrase: str
    skip: str | None = None  # why this machine cannot show the case (None: it can)
    interrupt_when: str | None = None  # Ctrl-C once this glob matches ({placeholders}; "err:TEXT": stderr shows TEXT)
    process: bool = False  # run as a real `modarb` process (every Ctrl-C case is), else through main() here


NO_CUDA = "CUDA is available here" if torch.cuda.is_available() else None
NO_TORCHVISION = "torchvision is installed here" if _torchvision_installed() else None
EVAL = ("eval", "--tasks", "mf_follow_image", "--limit", "2", "--batch_size", "2")

CASES = [
    # --- argument parsing: answered before anything heavy is imported --------------------------
    Case("unknown_command", ("nosuchcommand",), 2, "invalid choice: 'nosuchcommand'"),
    Case("unknown_option_names_its_subcommand", ("flow", "--no-such-option"), 2,
         "modarb flow: error: unrecognized arguments: --no-such-option; see `modarb flow --help`", process=True),
    Case("unknown_option_of_identify", ("identify", "--no-such-option"), 2, "modarb identify: error: unrecognized"),
    Case("unknown_option_of_a_nested_command", ("organism", "train", "--no-such-option"), 2,
         "modarb organism train: error: unrecognized arguments"),
    Case("check_without_results", ("check", "--baseline", "{baseline}"), 2, "required: --results"),
    Case("flow_window_zero", ("flow", "--window", "0", "--out", "{out}"), 2, "--window 0 must be", process=True),
    Case("flow_unknown_layout", ("flow", "--layouts", "sideways", "--out", "{out}"), 2, "unknown layout 'sideways'"),
    Case("flow_unknown_split", ("flow", "--split", "training", "--out", "{out}"), 2, "invalid choice: 'training'"),
    Case("flow_n_items_zero", ("flow", "--n-items", "0", "--out", "{out}"), 2, "--n-items 0 must be at least 1"),
    Case("identify_top_above_one", ("identify", "--top", "1.5", "--out", "{out}"), 2, "--top 1.5 must be a fraction"),
    Case("identify_method_skipped", ("identify", "--method", "ablation", "--no-exact", "--out", "{out}"), 2,
         "drop --no-exact"),
    Case("identify_curve_heads_negative", ("identify", "--curve-heads", "-1", "--out", "{out}"), 2,
         "--curve-heads -1 must be 0"),
    Case("reproduce_limit_zero", ("reproduce", "--limit", "0", "--out", "{out}"), 2, "--limit must be at least 1"),
    Case("reproduce_fractions_not_numbers", ("reproduce", "--fractions", "a,b", "--out", "{out}"), 2,
         "expected comma-separated numbers"),
    Case("reproduce_top_not_a_fraction", ("reproduce", "--top", "0.07", "--out", "{out}"), 2,
         "must be one of the blocking fractions"),
    Case("organism_steps_zero", ("organism", "train", "--steps", "0", "--out", "{out}"), 2,
         "--steps 0 must be at least 1"),
    # --- output folders: the user's files are never deleted, moved or mixed with ours -----------
    Case("identify_out_is_a_file", ("identify", "--out", "{user_file}"), 2, "is a file, not a folder"),
    Case("flow_out_is_a_file", ("flow", "--out", "{user_file}"), 2, "is a file, not a folder"),
    Case("reproduce_out_is_a_file", ("reproduce", "--out", "{user_file}"), 2, "is a file, not a folder"),
    Case("organism_out_is_a_file", ("organism", "train", "--steps", "1", "--out", "{user_file}"), 2, "is a file"),
    Case("reproduce_out_holds_the_users_files", ("reproduce", "--out", "{user_dir}"), 2,
         "already holds items.csv, which modarb did not write", process=True),
    Case("identify_out_holds_the_users_files", ("identify", "--out", "{user_dir}"), 2, "which modarb did not write"),
    Case("flow_out_holds_the_users_files", ("flow", "--out", "{user_dir}"), 2, "which modarb did not write"),
    Case("modarb_folder_with_a_user_file_added", ("flow", "--out", "{touched_dir}"), 2,
         "already holds my_notes.md, which modarb did not write"),
    Case("identify_out_read_only", ("identify", "--out", "{read_only}/identify"), 2, "cannot write in", process=True),
    Case("flow_out_read_only", ("flow", "--out", "{read_only}/flow"), 2, "cannot write in"),
    Case("reproduce_out_read_only", ("reproduce", "--out", "{read_only}/demo"), 2, "cannot write in"),
    Case("organism_train_read_only_checked_before_training",
         ("organism", "train", "--steps", "1", "--out", "{read_only}/organism"), 2, "cannot write in"),
    Case("leaderboard_add_read_only", ("leaderboard", "add", "{baseline}", "--entries", "{read_only}/entries"), 2,
         "--entries {read_only}/entries: cannot write in"),
    Case("leaderboard_build_read_only", ("leaderboard", "build", "--entries", "{entries}", "--out",
                                         "{read_only}/board"), 2, "cannot write in"),
    Case("leaderboard_build_out_is_a_file", ("leaderboard", "build", "--entries", "{entries}", "--out", "{user_file}"),
         2, "is a file, not a folder"),
    # --- devices and models: one line before any weight is read ---------------------------------
    Case("identify_device_cuda_without_cuda", ("identify", "--device", "cuda", "--out", "{out}"), 2,
         "no CUDA GPU is available here", skip=NO_CUDA),
    Case("flow_device_not_a_device", ("flow", "--device", "gpu7", "--out", "{out}"), 2, "is not a torch device"),
    Case("eval_device_cuda_without_cuda", (*EVAL, "--device", "cuda", "--output_path", "{out}"), 2,
         "no CUDA GPU is available here", skip=NO_CUDA),
    Case("eval_pretrained_missing_folder", (*EVAL, "--model_args", "pretrained=/nonexistent/llava",
                                            "--output_path", "{out}"), 2, "model folder /nonexistent/llava not found"),
    Case("identify_model_missing_folder", ("identify", "--model", "./no_such_model", "--out", "{out}"), 2,
         "model folder ./no_such_model not found"),
    Case("eval_pretrained_not_cached_offline", (*EVAL, "--model_args", "pretrained=no-org/no-such-vlm",
                                                "--output_path", "{out}"), 2, "nor in the Hugging Face cache"),
    Case("eval_pretrained_text_only_model", (*EVAL, "--model_args", "pretrained={text_only}",
                                             "--output_path", "{out}"), 2, "is a text-only model (model_type 'gpt2')"),
    Case("flow_model_text_only", ("flow", "--model", "{text_only}", "--out", "{out}"), 2, "is a text-only model"),
    Case("eval_pretrained_without_config", (*EVAL, "--model_args", "pretrained={no_config}",
                                            "--output_path", "{out}"), 2, "has no config.json"),
    Case("eval_truncated_safetensors", (*EVAL, "--model_args", "pretrained={truncated}", "--output_path", "{out}"),
         2, "model.safetensors is truncated or corrupt"),
    Case("identify_truncated_safetensors", ("identify", "--model", "{truncated}", "--out", "{out}"), 2,
         "is truncated or corrupt"),
    Case("eval_processor_needs_torchvision", (*EVAL, "--model_args", "pretrained={needs_torchvision}",
                                              "--output_path", "{out}"), 2, "needs torchvision",
         skip=NO_TORCHVISION),
    # --- hf-modarb model args: typos, wrong types, arguments that would be ignored --------------
    Case("model_arg_typo", (*EVAL, "--model_args", "blok=L3H1", "--output_path", "{out}"), 2,
         "unknown model arg blok= for hf-modarb; did you mean block=?", process=True),
    Case("alpha_not_a_number", (*EVAL, "--model_args", "amplify=L2H0,alpha=abc", "--output_path", "{out}"), 2,
         "alpha=abc must be a finite number"),
    Case("alpha_negative", (*EVAL, "--model_args", "amplify=L2H0,alpha=-1", "--output_path", "{out}"), 2,
         "must be a finite number >= 0, e.g. alpha=2"),
    Case("alpha_with_block_only", (*EVAL, "--model_args", "block=L3H1,alpha=5", "--output_path", "{out}"), 2,
         "alpha=5 scales amplify= heads, but none are given"),
    Case("positions_without_heads", (*EVAL, "--model_args", "positions=last", "--output_path", "{out}"), 2,
         "positions=last applies to block=/amplify= heads"),
    Case("positions_unknown", (*EVAL, "--model_args", "block=L3H1,positions=middle", "--output_path", "{out}"), 2,
         "positions=middle is not a position scope"),
    Case("spec_and_inline_heads", (*EVAL, "--model_args", "spec={spec},block=L0H0", "--output_path", "{out}"), 2,
         "give either spec=<file> or inline"),
    Case("spec_missing_file", (*EVAL, "--model_args", "spec=/nonexistent/spec.json", "--output_path", "{out}"), 2,
         "spec file /nonexistent/spec.json does not exist"),
    Case("dtype_unknown", (*EVAL, "--model_args", "dtype=float33", "--output_path", "{out}"), 2,
         "dtype=float33 is not a dtype"),
    # --- lm-eval runs: stopped before the first request, or failed when results are not saved --
    Case("stock_hf_multimodal_on_a_mixed_group",
         ("eval", "--model", "hf-multimodal", "--model_args", "pretrained={organism}", "--tasks", "modarb",
          "--limit", "2", "--output_path", "{out}"), 2, "use --model hf-modarb"),
    Case("image_positions_on_a_text_only_task",
         ("eval", "--model_args", "block=L3H1,positions=image", "--tasks", "modality_controls", "--limit", "2",
          "--output_path", "{out}"), 2, "task mf_language_control has no image"),
    Case("metadata_negative_count", (*EVAL, "--metadata", '{"shapes_n": -5}', "--output_path", "{out}"), 2,
         "--metadata shapes_n=-5 must be a whole number >= 1"),
    Case("bad_head_name", (*EVAL, "--model_args", "block=L3X1", "--output_path", "{out}"), 2,
         "cannot read head 'L3X1'"),
    Case("log_samples_without_output_path", (*EVAL, "--log_samples"), 2, "Specify --output_path"),
    Case("eval_output_path_is_a_file", (*EVAL, "--output_path", "{user_file}"), 2, "--output_path"),
    Case("eval_output_path_read_only", (*EVAL, "--output_path", "{read_only}/results"), 2, "cannot write in"),
    Case("eval_results_not_written", (*EVAL, "--output_path", "{blocked_results}"), 2,
         "lm-eval could not write the results", process=True),
    Case("check_across_item_counts", ("check", "--baseline", "{baseline}", "--results", "{fewer_items}"), 2,
         "the baseline scored 40 items, the new results 8"),
    # --- results that would lie or be lost: a full disk, a check that cannot fail, a wiped board -
    Case("eval_full_disk_leaves_no_truncated_results", (*EVAL, "--output_path", "{full_disk}/eval"), 2,
         "lm-eval could not write the results"),
    Case("leaderboard_build_full_disk", ("leaderboard", "build", "--entries", "{entries}", "--out",
                                         "{full_disk}/board"), 2, "the disk is full", process=True),
    Case("check_tolerance_nan", ("check", "--baseline", "{baseline}", "--results", "{regressed}", "--tolerance", "nan"),
         2, "--tolerance nan must be a finite number"),
    Case("check_z_inf", ("check", "--baseline", "{baseline}", "--results", "{regressed}", "--z", "inf"), 2,
         "--z inf must be a finite number"),
    Case("check_tolerance_not_a_number", ("check", "--baseline", "{baseline}", "--results", "{regressed}",
                                         "--tolerance", "abc"), 2, "--tolerance 'abc' is not a number"),
    Case("check_metric_out_of_range", ("check", "--baseline", "{baseline}", "--results", "{out_of_range}"), 2,
         "metric 'mf_ratio' is 7.5, outside 0..1"),
    Case("leaderboard_build_mistyped_entries", ("leaderboard", "build", "--entries", "{user}/leaderbord/entries",
                                                "--out", "{user_board}"), 2, "does not exist"),
    Case("leaderboard_build_empty_entries", ("leaderboard", "build", "--entries", "{empty_entries}",
                                             "--out", "{user_board}"), 2, "holds no leaderboard entry"),
    Case("leaderboard_build_over_the_users_readme", ("leaderboard", "build", "--entries", "{entries}",
                                                     "--out", "{user_board}"), 2,
         "already holds README.md, which `modarb leaderboard build` did not write"),
    Case("leaderboard_build_corrupt_entry", ("leaderboard", "build", "--entries", "{corrupt_entries}", "--out",
                                             "{out}"), 2, "malformed leaderboard entry: tasks/mf_follow_image/metrics"),
    Case("leaderboard_add_model_args_int", ("leaderboard", "add", "{model_args_int}", "--entries", "{out}"), 2,
         "malformed results file: config/model_args"),
    Case("leaderboard_add_date_out_of_range", ("leaderboard", "add", "{far_date}", "--entries", "{out}"), 2,
         "malformed results file: date"),
    Case("leaderboard_add_task_not_an_object", ("leaderboard", "add", "{task_string}", "--entries", "{out}"), 2,
         "malformed results file: results/mf_follow_image"),
    Case("check_task_not_an_object", ("check", "--baseline", "{baseline}", "--results", "{task_string}"), 2,
         "malformed results file: results/mf_follow_image"),
    Case("organism_force_over_the_users_folder", ("organism", "train", "--force", "--steps", "1", "--out",
                                                  "{user_board}"), 2, "already holds README.md, which modarb did not"),
    Case("reproduce_fractions_above_one", ("reproduce", "--fractions", "1.5,0.05", "--out", "{out}"), 2,
         "--fractions 1.5,0.05 must be one or more fractions"),
    Case("reproduce_alphas_empty", ("reproduce", "--alphas", "", "--out", "{out}"), 2, "--alphas '' must be"),
    Case("reproduce_alphas_negative", ("reproduce", "--alphas=-1", "--out", "{out}"), 2, "--alphas -1.0 must be"),
    Case("reproduce_out_current_folder", ("reproduce", "--out", "."), 2, "is the current folder"),
    Case("identify_out_empty", ("identify", "--out", ""), 2, "is the current folder"),
    Case("reproduce_out_symlink", ("reproduce", "--out", "{user_link}"), 2, "is a symbolic link"),
    Case("reproduce_use_cache_is_a_file", ("reproduce", "--use-cache", "{user_file}", "--out", "{out}"), 2,
         "--use-cache {user_file} is a file"),
    Case("block_empty", (*EVAL, "--model_args", "block=", "--output_path", "{out}"), 2,
         "block= is empty, so nothing would change"),
    Case("knockout_spec_without_edges", (*EVAL, "--model_args", "spec={empty_knockout_spec}", "--output_path",
                                         "{out}"), 2, "knockout has no edges, so it would change nothing"),
    Case("eval_pretrained_without_weights", (*EVAL, "--model_args", "pretrained={no_weights}", "--output_path",
                                             "{out}"), 2, "has a config.json but no weight files"),
    Case("eval_pretrained_without_processor", (*EVAL, "--model_args", "pretrained={no_processor}", "--output_path",
                                               "{out}"), 2, "has weights but no tokenizer files"),
    Case("spec_nested_too_deeply", (*EVAL, "--model_args", "spec={deep_spec}", "--output_path", "{out}"), 2,
         "JSON nested too deeply to be a spec"),
    Case("eval_limit_zero", ("eval", "--tasks", "mf_follow_image", "--limit", "0", "--output_path", "{out}"), 2,
         "--limit 0 must be > 0"),
    Case("eval_limit_negative", ("eval", "--tasks", "mf_follow_image", "--limit", "-1", "--output_path", "{out}"), 2,
         "--limit -1 must be > 0"),
    Case("eval_without_tasks", ("eval", "--limit", "2", "--output_path", "{out}"), 2, "no --tasks given"),
    Case("eval_metadata_malformed_json", (*EVAL, "--metadata", '{"shapes_n": 8', "--output_path", "{out}"), 2,
         "--metadata '{\"shapes_n\": 8' is not valid JSON"),
    Case("eval_model_args_malformed_json", (*EVAL, "--model_args", '{"block": "L3H1"', "--output_path", "{out}"), 2,
         "--model_args '{\"block\": \"L3H1\"' is not valid JSON"),
    # --- Ctrl-C: one line, 130, no half-written folder, the earlier output as it was -------------
    Case("ctrl_c_reproduce", ("reproduce", "--out", "{out}", "--limit", "4", "--draws", "1", "--fractions", "0.05",
                              "--alphas", "2", "--analysis-items", "4", "--learned-steps", "2"), 130, "interrupted",
         interrupt_when="{case}/.out.partial-*/runs/baseline/results/*.json"),
    Case("ctrl_c_identify_over_its_earlier_output", ("identify", "--out", "{earlier}", "--n-items", "64"), 130,
         "interrupted", interrupt_when="{user}/.earlier.partial-*"),
    Case("ctrl_c_eval", ("eval", "--tasks", "mf_follow_image", "--limit", "100", "--batch_size", "1",
                         "--output_path", "{out}"), 130, "interrupted", interrupt_when="err:Running generate_until"),
]


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    folder: Path  # the case's own folder; {out} is folder / "out"


def _read_only_folder(root: Path) -> Path | None:
    """A folder this process cannot write in: a chmod-ed one, or /sys where root ignores modes."""
    folder = root / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    for candidate in (folder, Path("/sys")):
        try:
            (candidate / ".probe").mkdir()
        except OSError:
            return candidate
        (candidate / ".probe").rmdir()
    return None


def _user_files(root: Path, organism: Path) -> dict[str, Path]:
    """The paths the rows name: the user's own files and folders, and broken models."""
    import shutil

    paths = {"organism": organism, "baseline": next((FIXTURES / "organism_baseline").rglob("results_*.json"))}
    user = root / "user"
    (user / "my_data").mkdir(parents=True)
    (user / "my_data" / "notes.txt").write_text("a week of notes\n")
    (user / "my_data" / "items.csv").write_text("id,answer\n1,red\n")
    (user / "results.txt").write_text("keep me\n")
    paths |= {"user": user, "user_dir": user / "my_data", "user_file": user / "results.txt"}
    touched = user / "old_flow"  # written by modarb, then the user added a file
    touched.mkdir()
    (touched / "flow.json").write_text("{}\n")
    (touched / MANIFEST).write_text(json.dumps({"written_by": "modarb", "files": ["flow.json"]}))
    (touched / "my_notes.md").write_text("what the flow shows\n")
    earlier = user / "earlier"  # a complete earlier identify output
    earlier.mkdir()
    (earlier / "identify.json").write_text('{"earlier": true}\n')
    (earlier / "spec_top5.json").write_text('{"earlier": true}\n')
    (earlier / MANIFEST).write_text(json.dumps({"written_by": "modarb", "files": ["identify.json", "spec_top5.json"]}))
    paths |= {"touched_dir": touched, "earlier": earlier}

    models = root / "models"
    (models / "text_only").mkdir(parents=True)
    (models / "text_only" / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    (models / "no_config").mkdir()
    (models / "no_config" / "weights.bin").write_bytes(b"\0" * 16)
    truncated = shutil.copytree(organism, models / "truncated")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    torchvision = shutil.copytree(organism, models / "needs_torchvision")  # Pixtral's processor needs torchvision
    config = json.loads((torchvision / "processor_config.json").read_text())
    (torchvision / "processor_config.json").write_text(json.dumps(config | {"processor_class": "PixtralProcessor"}))
    paths |= {"text_only": models / "text_only", "no_config": models / "no_config", "truncated": truncated,
              "needs_torchvision": torchvision}
    no_weights = shutil.copytree(organism, models / "no_weights", ignore=shutil.ignore_patterns("*.safetensors"))
    (models / "no_processor").mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(organism / name, models / "no_processor" / name)
    (root / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    paths |= {"no_weights": no_weights, "no_processor": models / "no_processor", "deep_spec": root / "deep.json"}

    raw = json.loads(paths["baseline"].read_text())
    for counts in raw["n-samples"].values():
        counts["effective"] = 8
    (root / "fewer_items").mkdir()
    (root / "fewer_items" / "results_limit8.json").write_text(json.dumps(raw))
    paths["fewer_items"] = root / "fewer_items" / "results_limit8.json"
    blocked = root / "blocked_results"  # lm-eval writes <path>/modarb-organism/...: a file stands there
    blocked.mkdir()
    (blocked / "modarb-organism").write_text("not a folder\n")
    paths |= {"blocked_results": blocked, "entries": FIXTURES.parent.parent.parent / "leaderboard" / "entries"}
    from interventions.mechanism.spec import HeadScale, InterventionSpec, model_fingerprint
    from transformers import AutoModelForImageTextToText

    fingerprint = model_fingerprint(AutoModelForImageTextToText.from_pretrained(organism))
    paths["spec"] = InterventionSpec(model=fingerprint, heads=(HeadScale(0, 0, 0.0),)).save(root / "spec.json")
    document = json.loads(paths["spec"].read_text()) | {"knockout": {"edges": [], "layers": [1]}}
    (root / "empty_knockout.json").write_text(json.dumps(document))
    paths["empty_knockout_spec"] = root / "empty_knockout.json"
    return paths | _edited_results(root, paths)


def _edited_results(root: Path, paths: dict[str, Path]) -> dict[str, Path]:
    """Results files and entries edited by hand, a folder of the user's with its own README.md, a link."""
    edited = root / "edited"
    edited.mkdir()
    made = {}

    def results(name: str, edit) -> None:
        raw = json.loads(paths["baseline"].read_text())
        edit(raw)
        made[name] = edited / name / f"results_{name}.json"
        made[name].parent.mkdir()
        made[name].write_text(json.dumps(raw))

    def drop_to_zero(raw):
        for task, scores in raw["results"].items():
            for key in [k for k in scores if k.startswith(("mf_ratio,", "acc,"))]:
                scores[key] = 0.0

    results("regressed", drop_to_zero)
    results("out_of_range", lambda raw: raw["results"]["mf_follow_image"].update({"mf_ratio,none": 7.5}))
    results("model_args_int", lambda raw: raw["config"].update({"model_args": 7}))
    results("far_date", lambda raw: raw.update({"date": 1e300}))
    results("task_string", lambda raw: raw["results"].update({"mf_follow_image": "0.9"}))
    corrupt = edited / "corrupt_entries"
    corrupt.mkdir()
    entry_file = next((paths["entries"]).glob("result__*.json"))
    entry = json.loads(entry_file.read_text())
    entry["tasks"]["mf_follow_image"]["metrics"]["mf_ratio"]["value"] = "high"
    (corrupt / entry_file.name).write_text(json.dumps(entry))
    (edited / "empty_entries").mkdir()
    board = paths["user"] / "site"
    board.mkdir()
    (board / "README.md").write_text("# my project\n")
    (paths["user"] / "link_to_site").symlink_to(board)
    return made | {"corrupt_entries": corrupt, "empty_entries": edited / "empty_entries", "user_board": board,
                   "user_link": paths["user"] / "link_to_site"}


def _full_disk(root: Path) -> Path | None:
    """A 64 KiB tmpfs filled up to its last 4 KiB, less than any results file or board needs (None where
    this process may not mount one). The filler lies in `.filler/`."""
    folder = root / "full_disk"
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        return None
    filler = folder / ".filler"
    filler.mkdir()
    try:
        for index in range(64):
            (filler / str(index)).write_bytes(b"\0" * 4096)
    except OSError:
        (filler / str(index)).unlink(missing_ok=True)
    (filler / "0").unlink()
    return folder


def _watched(root: Path, paths: dict[str, Path]) -> list[Path]:
    """What the user had before the cases ran, all of which must be exactly as it was after them."""
    return [root / "user", root / "fewer_items", root / "blocked_results", root / "edited", paths["baseline"],
            paths["entries"]]


def _snapshot(paths) -> dict[str, str]:
    """Relative path -> content hash of every file under the given folders/files."""
    files = {}
    for path in paths:
        for item in [path] if path.is_file() else sorted(path.rglob("*")):
            if item.is_file():
                files[str(item)] = hashlib.sha256(item.read_bytes()).hexdigest()
    return files


def _fill(argv: tuple[str, ...], paths: dict[str, Path]) -> list[str]:
    """The arguments with each {name} of `paths` filled in (other braces, e.g. JSON, stay)."""
    return [re.sub(r"\{(\w+)\}", lambda m: str(paths.get(m[1], m[0])), arg) for arg in argv]


def _ready_for_ctrl_c(case: Case, paths: dict[str, Path], err_file: Path) -> bool:
    """Whether the case's sign of progress has appeared (then it gets its Ctrl-C)."""
    sign = _fill((case.interrupt_when,), paths)[0]
    if sign.startswith("err:"):
        return sign[4:] in err_file.read_text(errors="replace")
    return any(Path("/").glob(sign.lstrip("/")))


def _run_processes(cases: list[Case], start, results: dict[str, Outcome], seconds: dict[str, float]) -> None:
    """Every case in `cases` as a real `modarb` process, PARALLEL at a time; `start(case)` -> (Popen, folder,
    filled paths). A case with `interrupt_when` gets its Ctrl-C once its sign of progress appears. What goes
    wrong here is kept in results["processes_failed"] (this runs in a thread)."""
    pending, running, started = list(cases), {}, {}
    deadline = time.monotonic() + 1200
    try:
        while pending or running:
            while pending and len(running) < PARALLEL:
                case = pending.pop(0)
                running[case.name] = (case, *start(case))
                started[case.name] = time.monotonic()
            for name, (case, process, folder, filled) in list(running.items()):
                if process.poll() is not None:
                    results[name] = Outcome(process.returncode, (folder / "stdout").read_text(),
                                            (folder / "stderr").read_text(), folder)
                    del running[name]
                    seconds[name] = round(time.monotonic() - started[name], 1)
                elif case.interrupt_when and _ready_for_ctrl_c(case, filled, folder / "stderr"):
                    process.send_signal(signal.SIGINT)
                    running[name] = (replace(case, interrupt_when=None), process, folder, filled)
            if time.monotonic() > deadline:
                raise TimeoutError(f"still running after 20 minutes: {sorted(running)}")
            time.sleep(0.1)
    except Exception:  # noqa: BLE001 - reported by the module's tests
        results["processes_failed"] = Outcome(1, "", traceback.format_exc(), Path())
    finally:
        for _, process, _, _ in running.values():
            process.kill()


@pytest.fixture(scope="module")
def outcomes(organism_dir, tmp_path_factory) -> tuple[dict[str, Outcome], dict[str, str], dict[str, Path]]:
    """Every case run: the real processes (slow ones first) in a thread while the others run here, one by one;
    (name -> Outcome, the user's files before, paths)."""
    import threading

    root = tmp_path_factory.mktemp("bad_input")
    paths = _user_files(root, organism_dir)
    read_only = _read_only_folder(root)
    paths["read_only"] = read_only or root / "not_read_only"
    full_disk = _full_disk(root)
    paths["full_disk"] = full_disk or root / "no_full_disk"
    before = _snapshot(_watched(root, paths))
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                        "TOKENIZERS_PARALLELISM": "false"}
    env.pop("MODARB_DEBUG", None)
    runnable = [case for case in CASES
                if not case.skip and not ("{read_only}" in " ".join(case.argv) and read_only is None)
                and not ("{full_disk}" in " ".join(case.argv) and full_disk is None)]
    in_processes = sorted((case for case in runnable if case.process or case.interrupt_when),
                          key=lambda case: (case.interrupt_when is None, case.argv[0] != "eval"))

    def prepared(case: Case) -> tuple[Path, dict[str, Path]]:
        folder = root / case.name
        folder.mkdir()
        return folder, paths | {"out": folder / "out", "case": folder}

    def start(case: Case) -> tuple[subprocess.Popen, Path, dict[str, Path]]:
        folder, filled = prepared(case)
        with (folder / "stdout").open("w") as out, (folder / "stderr").open("w") as err:
            process = subprocess.Popen([str(BIN / "modarb"), *_fill(case.argv, filled)], cwd=folder, env=env,
                                       stdout=out, stderr=err)
        return process, folder, filled

    results: dict[str, Outcome] = {}
    seconds: dict[str, float] = {}
    # A background job (nohup, `&`) starts with Ctrl-C ignored, and the cases would inherit that: a handler
    # here makes them start with a terminal's Ctrl-C (exec resets a handler to the default, not an ignore).
    sigint = signal.signal(signal.SIGINT, signal.default_int_handler)
    processes = threading.Thread(target=_run_processes, args=(in_processes, start, results, seconds))
    processes.start()
    try:
        for case in runnable:
            if case not in in_processes:
                started = time.monotonic()
                folder, filled = prepared(case)
                ended = run_here(_fill(case.argv, filled), folder)
                results[case.name] = Outcome(ended.returncode, ended.stdout, ended.stderr, folder)
                seconds[case.name] = round(time.monotonic() - started, 1)
    finally:
        processes.join()
        signal.signal(signal.SIGINT, sigint)
        if read_only is not None and read_only != Path("/sys"):
            read_only.chmod(0o755)
        if full_disk is not None:
            results["full_disk_after"] = Outcome(0, "\n".join(sorted(
                str(p) for p in full_disk.rglob("*") if p.is_file() and ".filler" not in p.parts)),
                                                 "", full_disk)
            subprocess.run(["umount", str(full_disk)], capture_output=True)
        (root / "seconds.json").write_text(json.dumps(seconds, indent=1))  # wall time per case, to keep them quick
    return results, before, paths


def test_the_catalogue_has_at_least_70_cases():
    assert len(CASES) >= 70 and len({case.name for case in CASES}) == len(CASES)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_is_one_line_with_its_exit_and_nothing_half_written(case, outcomes):
    results, _, paths = outcomes
    if case.skip:
        pytest.skip(case.skip)
    assert "processes_failed" not in results, results["processes_failed"].stderr
    if case.name not in results:
        pytest.skip("no folder this process cannot write in (root without /sys), or no tmpfs to fill (mount refused)")
    run = results[case.name]
    assert run.returncode == case.exit, run.stderr[-3000:]
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    verdicts = [line for line in lines if line.startswith(ERROR_LINE) and (": error: " in line or "interrupted" in line)]
    assert verdicts == [lines[-1]], lines[-6:]
    phrase = _fill((case.phrase,), paths)[0]
    assert phrase in lines[-1], lines[-1]
    out = run.folder / "out"
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))
    leftovers = [hidden.name for where in (run.folder, paths["user"]) for hidden in where.glob(".*partial-*")]
    assert leftovers == []


@pytest.mark.slow
def test_nothing_of_the_users_was_deleted_moved_or_changed(outcomes):
    results, before, paths = outcomes
    root = paths["user_dir"].parent.parent
    after = _snapshot(_watched(root, paths))
    assert after == before


@pytest.mark.slow
def test_a_full_disk_leaves_no_partial_file(outcomes):
    results, _, _ = outcomes
    if "full_disk_after" not in results:
        pytest.skip("no tmpfs to fill here (mount refused)")
    assert results["full_disk_after"].stdout == ""  # no truncated results file, no half-written board


@pytest.mark.slow
def test_ctrl_c_leaves_the_earlier_output_whole(outcomes):
    results, _, paths = outcomes
    earlier = paths["earlier"]
    assert sorted(p.name for p in earlier.iterdir()) == sorted([MANIFEST, "identify.json", "spec_top5.json"])
    assert json.loads((earlier / "identify.json").read_text()) == {"earlier": True}
    assert results["ctrl_c_identify_over_its_earlier_output"].returncode == 130
