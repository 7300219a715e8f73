"""The training loop on the ZeRO-3 engine: accumulation, NaN guard, eval, logging, checkpoints.

Determinism (what exact resume relies on): every rank seeds python / numpy / torch with
training.seed before the model is built (so ZeRO-3's partitioned init agrees across ranks), the
data order is the stateful sampler's, and the noise of micro batch i on rank r comes from its own
generator seeded by (seed, i, r), so it does not depend on what ran before in the process.
"""
from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from chunksft.checkpoint.manager import CheckpointManager, check_config_hash, fault_here, find_resume
from chunksft.checkpoint.tags import CHECKPOINTS, passed_over, tag_for
from chunksft.data import ChunkCollator, DataError, StatefulDistributedSampler, build_dataset, debug_view, load_tokenizer
from chunksft.evaluate import answer_accuracy
from chunksft.ops.chunk_mask import ChunkMask
from chunksft.train.config import TrainConfig
from chunksft.train.distributed import DistInfo, all_mean, any_rank, broadcast_from_main, max_over_ranks, on_main
from chunksft.train.engine import build_engine, check_attention
from chunksft.train.metrics import MetricsLogger
from chunksft.train.run_folder import RunLock, move_previous_run
from chunksft.train.stopping import StopSignals, TrainingStopped, signal_name

# Stream tags of the noise generators: training micro batches and evaluation batches never share one.
_TRAIN_STREAM, _EVAL_STREAM = 0, 1
_MODEL_INPUTS = ("input_ids", "attention_mask", "src_mask", "prompt_lens")


def noise_generator(seed: int, stream: int, index: int, rank: int) -> torch.Generator:
    """A CPU generator for one batch, independent of every other (seed, stream, index, rank)."""
    state = np.random.SeedSequence([seed, stream, index, rank]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_deterministic(enabled: bool) -> None:
    """training.deterministic: deterministic kernels where torch has a choice (CUDA mostly; CPU runs
    with a fixed OMP_NUM_THREADS are already bitwise reproducible). warn_only: an op without a
    deterministic kernel warns instead of stopping the run."""
    if not enabled:
        return
    if torch.cuda.is_available():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False


class NonFiniteLossError(RuntimeError):
    pass


class Trainer:
    """One training run: `Trainer(cfg, dist_info, signals).train()` on every rank, with the output
    folder locked (see `run`); `signals` records SIGTERM / SIGINT for a graceful stop."""

    def __init__(self, cfg: TrainConfig, dist_info: DistInfo, signals: StopSignals):
        self.cfg, self.dist, self.signals = cfg, dist_info, signals
        self.out_dir = cfg.training.output_dir
        self.mode = cfg.objective.training_mode
        check_attention(cfg)
        seed_everything(cfg.training.seed)
        set_deterministic(cfg.training.deterministic)
        # Masked diffusion needs a mask token; HF tokenizers without one get it appended (the
        # backbone's embedding rows past the tokenizer's length are free for it, checked in build_model).
        self.tokenizer = load_tokenizer(cfg.data.tokenizer, add_mask_token=True)
        self.train_set, self.eval_set = self._datasets()
        # Rank 0 alone reads it (the resume check, the marker it writes): hashed there once.
        self.data_identity = on_main(lambda: {"rows": len(self.train_set), "fingerprint": self.train_set.fingerprint()})
        self.data_changed = False
        self.sampler = StatefulDistributedSampler(self.train_set, dist_info.world_size, dist_info.rank,
                                                  shuffle=True, seed=cfg.training.seed)
        self.collate = ChunkCollator(self.tokenizer.pad_token_id, cfg.objective.chunk_size)
        t = cfg.training
        micro_per_epoch = -(-len(self.sampler) // t.batch_size)
        self.total_steps = t.max_steps or max(1, t.num_epochs * micro_per_epoch // t.gradient_accumulation_steps)

        self.resume_point = self._resolve_resume()
        if self.resume_point is None or os.path.abspath(self.resume_point.ckpt_root) != \
                os.path.abspath(os.path.join(self.out_dir, CHECKPOINTS)):
            # A new run in this folder (fresh, or continuing another folder's checkpoint): the files
            # of the run that was here go aside as a whole, so two runs never mix.
            moved = on_main(lambda: move_previous_run(self.out_dir))
            if moved:
                self.print(f"{self.out_dir} held another run: moved its files to {moved}")
        self.engine, self._hf_ds = build_engine(cfg, dist_info, self.tokenizer, self.total_steps,
                                                load_universal=bool(self.resume_point and self.resume_point.universal))
        self.model = self.engine.module
        self.ckpt = CheckpointManager(self.out_dir, cfg.checkpoint.keep_last, rank=dist_info.rank,
                                      world_size=dist_info.world_size)
        self.step, self.epoch, self.micro_index, self.skipped = 0, 0, 0, 0
        if self.resume_point is not None:
            self._load(self.resume_point)
        self.start_step = self.step
        self.logger = MetricsLogger(self.out_dir, start_step=self.step,
                                    tensorboard=cfg.logging.tensorboard) if dist_info.is_main else None

    # ------------------------------------------------------------------------------ setup
    def _datasets(self):
        d, o = self.cfg.data, self.cfg.objective
        common = dict(tokenizer=self.tokenizer, chunk_size=o.chunk_size, max_length=d.max_length,
                      format=d.dataset_format, overflow=d.overlong)
        # Held-out rows are never training rows: a source without a separate eval set (a local file,
        # a hub dataset without eval_split) is split by question hash (chunksft.data.holdout).
        from chunksft.data.holdout import plan_splits

        train_part, eval_part = plan_splits(d.dataset_name, d.eval_dataset_name, d.train_split, d.eval_split)
        train, train_stats = build_dataset(**train_part.kwargs(), **common)
        eval_rows = max(d.eval_loss_rows, d.eval_generate_rows)
        held_out, eval_stats = (None, None)
        if eval_rows:
            held_out, eval_stats = build_dataset(**eval_part.kwargs(), max_rows=eval_rows, **common)
        self.print(f"data: {train_stats.summary()}")
        if eval_stats is not None:
            self.print(f"held-out data: {eval_stats.summary()}")
        return train, held_out

    def _resolve_resume(self):
        """Rank 0 picks (and if needed converts) the checkpoint; every rank gets the same answer or error."""
        c = self.cfg.checkpoint

        def check(point) -> None:  # before any universal conversion: a mismatched checkpoint is left as it is
            warning = check_config_hash(point, self.cfg.hash(), self.cfg.hashed_dict(), c.allow_config_mismatch)
            if warning:
                self.print(warning)
            self.data_changed = self._data_changed(point)

        # Any failure (also inside the universal conversion) reaches every rank.
        point = on_main(lambda: find_resume(c.resume, self.out_dir, self.dist.world_size, check=check))
        self.data_changed = bool(point) and broadcast_from_main(self.data_changed)
        for line in passed_over(point.skipped, point.tag, "resuming from") if point else ():
            self.print(line)
        return point

    def _load(self, point) -> None:
        state = self.ckpt.load(self.engine, point)
        self.step, self.epoch = state["step"], state["epoch"]
        self.micro_index, self.skipped = state["micro_index"], state["skipped"]
        if self.data_changed:
            self.epoch += 1  # --allow_data_change: the new rows start with a fresh epoch
        else:
            try:
                self.sampler.load_state_dict(state["sampler"])
            except ValueError as exc:  # a checkpoint from before the data fingerprint, on other rows
                raise DataError(f"{os.path.join(point.ckpt_root, point.tag)}: {exc}") from None
            if state["sampler"]["consumed"] >= state["sampler"]["dataset_len"]:
                self.epoch += 1  # saved right at the end of an epoch: continue with the next one
        where = "universal " if point.universal else ""
        self.print(f"resumed from {where}checkpoint {os.path.join(point.ckpt_root, point.tag)} at step {self.step} "
                   f"(saved by {point.marker['world_size']} ranks, now {self.dist.world_size})")

    def _data_changed(self, point) -> bool:
        """Whether the checkpoint was trained on other rows (its marker's data fingerprint); a change
        stops the run unless --allow_data_change. Markers without a fingerprint (older runs) pass here
        and are compared by row count when the sampler state loads."""
        saved = point.marker.get("data")
        if saved is None or saved == self.data_identity:
            return False
        line = (f"{os.path.join(point.ckpt_root, point.tag)} was trained on other rows ({saved['rows']} rows, "
                f"fingerprint {saved['fingerprint']}; this run has {self.data_identity['rows']} rows, "
                f"fingerprint {self.data_identity['fingerprint']})")
        if not self.cfg.checkpoint.allow_data_change:
            raise DataError(line + ": resume with the same data file, tokenizer and max_length, or pass "
                                   "--allow_data_change true to continue on the new rows from a fresh epoch")
        self.print(f"warning: {line}; continuing on the new rows from a fresh epoch (--allow_data_change)")
        return True

    def print(self, *args) -> None:
        if self.dist.is_main:
            print(*args, flush=True)

    # ------------------------------------------------------------------------------ data
    def _batches(self) -> Iterator[dict]:
        """Endless stream of this rank's micro batches across epochs; keeps self.epoch current."""
        loader = DataLoader(self.train_set, batch_size=self.cfg.training.batch_size, sampler=self.sampler,
                            collate_fn=self.collate, num_workers=0)
        while True:
            self.sampler.set_epoch(self.epoch)
            yield from loader
            self.epoch += 1

    def _inputs(self, batch: dict) -> dict:
        return {k: batch[k].to(self.dist.device) for k in _MODEL_INPUTS}

    # ------------------------------------------------------------------------------ train
    def train(self) -> dict:
        cfg, t = self.cfg, self.cfg.training
        self.print("resolved config (hash %s):\n%s" % (cfg.hash(), cfg.to_yaml().rstrip()))
        info = self._run_info()
        self.print(f"model: {info['parameters']:,} parameters ({info['trainable']:,} trainable), ZeRO-3 over "
                   f"{self.dist.world_size} rank(s) holding {info['local_elements']} elements each, "
                   f"{self.dist.backend}; {self.total_steps} optimizer steps of "
                   f"{t.batch_size}x{t.gradient_accumulation_steps}x{self.dist.world_size} rows")
        self._stop_if_signalled(saved=None)  # a signal during the setup: nothing trained yet
        if t.eval_at_start:
            self.evaluate()
        stop = min(self.total_steps, t.stop_at_step or self.total_steps)
        stream = self._batches()
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not (self.dist.is_main and cfg.logging.progress_bar),
                   dynamic_ncols=True, mininterval=2.0, file=sys.stdout)
        nonfinite_run = 0
        started = time.time()
        excluded = 0.0  # seconds spent in evaluation and saving, left out of train_seconds
        final_eval, saved_at = None, self.step
        last_save = time.time()
        save_every = cfg.checkpoint.save_every_minutes * 60.0
        while self.step < stop:
            sums: dict[str, float] = {}
            lr = self.engine.get_lr()[0]  # the rate this step's update uses (the schedule advances in step())
            done_micro = 0
            while done_micro < t.gradient_accumulation_steps:
                batch = next(stream)
                generator = noise_generator(t.seed, _TRAIN_STREAM, self.micro_index, self.dist.rank)
                self.micro_index += 1
                out = self.engine(**self._inputs(batch), training_mode=self.mode, generator=generator,
                                  return_logits=False)
                # Every rank must agree, or the ZeRO-3 collectives of backward would deadlock.
                if any_rank(not bool(torch.isfinite(out.loss.detach()).all()), self.dist.device):
                    self.skipped += 1
                    nonfinite_run += 1
                    self.print(f"step {self.step + 1}: non-finite loss, batch skipped ({nonfinite_run} in a row, "
                               f"{self.skipped} in total)")
                    if nonfinite_run >= t.max_nonfinite_in_a_row:
                        raise NonFiniteLossError(
                            f"{nonfinite_run} non-finite losses in a row at step {self.step + 1}; the last checkpoint "
                            f"is intact: lower training.learning_rate or check the data, then resume")
                    continue
                nonfinite_run = 0
                if cfg.logging.debug and self.dist.is_main and done_micro == 0 and \
                        (self.step == 0 or (self.step + 1) % cfg.logging.debug_interval == 0):
                    print(self._debug_text(batch, out), flush=True)
                self.engine.backward(out.loss)
                self.engine.step()
                for key, value in {"loss": out.loss, **out.metrics}.items():
                    sums[key] = sums.get(key, 0.0) + float(value.detach())
                done_micro += 1
            self.step += 1
            if fault_here("sigterm", self.step, self.dist.rank):
                os.kill(os.getpid(), signal.SIGTERM)
            keys = sorted(sums)
            means = all_mean(torch.tensor([sums[k] / t.gradient_accumulation_steps for k in keys]))
            row = {"step": self.step, **dict(zip(keys, means.tolist())), "lr": lr,
                   "epoch": self.epoch, "skipped": self.skipped, "time": round(time.time() - started, 3),
                   "train_seconds": round(time.time() - started - excluded, 3)}
            grad_norm = self.engine.get_global_grad_norm()
            if grad_norm is not None:
                row["grad_norm"] = float(grad_norm)
            aside = time.time()
            final = self.step >= self.total_steps
            # One agreement of all ranks per step: a signal on any rank, or the save clock.
            signalled, save_due = max_over_ranks(
                [float(self.signals.received or 0), float(bool(save_every) and aside - last_save >= save_every)],
                self.dist.device)
            # Save before evaluating: a failure in evaluation never costs trained steps.
            if (cfg.checkpoint.save_interval and self.step % cfg.checkpoint.save_interval == 0) or final \
                    or signalled or save_due:
                self.save()
                saved_at, last_save = self.step, time.time()
            if signalled:
                if self.logger is not None:
                    self.logger.log("metrics", row)
                    self.logger.close(plot=False)
                bar.close()
                self._stop_if_signalled(saved=self.step, signum=int(signalled))
            # Held-out metrics join the step's row (metrics.jsonl, TensorBoard, the plot beside the loss).
            if (t.eval_interval and self.step % t.eval_interval == 0) or final:
                evaluated = self.evaluate()
                row.update({k: v for k, v in evaluated.items() if k != "step"})
                final_eval = evaluated if final else None
            if self.logger is not None:
                self.logger.log("metrics", row)
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}", refresh=False)
            excluded += time.time() - aside
        bar.close()
        if self.step > self.start_step and saved_at != self.step:  # a finished run resumed again has nothing new
            self.save()
        result = {}
        if self.step >= self.total_steps:
            result = final_eval if final_eval is not None else self.evaluate()
        if cfg.logging.save_eval_logits and self.step >= self.total_steps:
            self._save_eval_logits()
        if self.logger is not None:
            plot = self.logger.close(cfg.logging.plot)
            if plot:
                self.print(f"loss curve: {plot}")
        return result

    def _stop_if_signalled(self, saved: Optional[int], signum: Optional[int] = None) -> None:
        """Raise TrainingStopped on every rank when a rank was signalled (`signum`: already agreed)."""
        if signum is None:
            signum = int(max_over_ranks([float(self.signals.received or 0)], self.dist.device)[0])
        if not signum:
            return
        name = signal_name(signum)
        if saved is None:
            raise TrainingStopped(f"stopped by {name} before the first training step; nothing new to save", signum)
        path = os.path.join(self.out_dir, CHECKPOINTS, tag_for(saved))
        raise TrainingStopped(f"stopped by {name} after step {saved}; saved {path}: relaunch with --resume auto "
                              "to continue", signum)

    def _run_info(self) -> dict:
        """Sizes of the run, also written to output_dir/run_info.json: total and trainable parameters,
        and the parameter elements each rank actually stores (its ZeRO-3 partitions)."""
        params = list(self.model.parameters())
        local = torch.tensor([float(sum(p.ds_tensor.numel() for p in params))])
        gathered = [torch.zeros(1) for _ in range(self.dist.world_size)]
        torch.distributed.all_gather(gathered, local)
        info = {"world_size": self.dist.world_size, "parameters": sum(p.ds_numel for p in params),
                "trainable": sum(p.ds_numel for p in params if p.requires_grad),
                "local_elements": [int(x.item()) for x in gathered], "config_hash": self.cfg.hash(),
                "total_steps": self.total_steps, "start_step": self.step}
        if self.dist.is_main:
            with open(os.path.join(self.out_dir, "run_info.json"), "w") as fh:
                json.dump(info, fh, indent=1)
        return info

    def save(self) -> None:
        state = {"step": self.step, "epoch": self.epoch, "micro_index": self.micro_index, "skipped": self.skipped,
                 "sampler": self.sampler.state_dict(), "config_hash": self.cfg.hash()}
        meta = {"config_hash": self.cfg.hash(), "config": self.cfg.to_dict(), "epoch": self.epoch,
                "model_config": self.model.config.to_dict(), "tokenizer": self.cfg.data.tokenizer,
                "data": self.data_identity}
        path = self.ckpt.save(self.engine, self.step, state, meta)
        self.print(f"saved checkpoint {path}")

    # ------------------------------------------------------------------------------ eval
    def _debug_text(self, batch: dict, out) -> str:
        """The DEBUG=1 view: data view of the masked batch + per-chunk loss and current prediction."""
        if out.chunk_masked is None:  # diffusion modes: token-level noise, no chunks
            return (f"[debug] step {self.step + 1}: masked tokens {float(out.metrics['masked_tokens']):.0f}, "
                    f"mean p_mask {float(out.metrics['p_mask']):.3f}")
        c = self.cfg.objective.chunk_size
        lines = [debug_view(batch, ChunkMask(out.noisy_input_ids.cpu(), out.labels.cpu(), out.chunk_masked.cpu()),
                            self.tokenizer, chunk_size=c, max_rows=self.cfg.logging.debug_rows)]
        lines.append("[debug] per-chunk loss and current prediction:")
        for m in range(min(4, out.chunk_index.shape[0])):
            row, chunk = out.chunk_index[m].tolist()
            predicted = self.tokenizer.decode(out.chunk_predictions[m].tolist()).replace("\n", "\\n")
            truth = self.tokenizer.decode(out.chunk_targets[m].tolist()).replace("\n", "\\n")
            lines.append(f"  row {row} chunk {chunk}: ce {float(out.chunk_ce[m]):.3f}  pred {predicted!r}  "
                         f"truth {truth!r}")
        return "\n".join(lines)

    def _eval_batches(self, rows: int) -> Iterator[dict]:
        for start in range(0, rows, self.cfg.training.batch_size):
            stop = min(rows, start + self.cfg.training.batch_size)
            yield self.collate([self.eval_set[i] for i in range(start, stop)])

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Held-out loss and answer accuracy (without / with refinement) at the current step.

        The loss runs the same batches with the same noise on every rank (ZeRO-3 needs every rank
        in each forward anyway), so it does not depend on the world size; generation is sharded.
        """
        d = self.cfg.data
        self.model.eval()
        result: dict = {"step": self.step}
        n_loss = min(d.eval_loss_rows, len(self.eval_set)) if self.eval_set is not None else 0
        if n_loss:
            total, rows = 0.0, 0
            for i, batch in enumerate(self._eval_batches(n_loss)):
                out = self.engine(**self._inputs(batch), training_mode=self.mode, return_logits=False,
                                  generator=noise_generator(self.cfg.training.seed, _EVAL_STREAM, i, 0))
                total += float(out.loss) * batch["input_ids"].shape[0]
                rows += batch["input_ids"].shape[0]
            result["eval_loss"] = total / rows
        n_gen = min(d.eval_generate_rows, len(self.eval_set)) if self.eval_set is not None else 0
        if n_gen:
            result.update(self._accuracy(n_gen, refine=False))
            if self.mode == "chunk_sft":
                result.update(self._accuracy(n_gen, refine=True))
        self.model.train()
        if self.logger is not None:
            self.logger.log("eval", result)
        self.print(format_eval(result))
        return result

    def _accuracy(self, rows: int, refine: bool) -> dict:
        """Exact-match accuracy of the generated <answer> over the first `rows` held-out rows."""
        w, r = self.dist.world_size, self.dist.rank
        mine = list(range(r, rows, w))
        per_rank = -(-rows // w)
        # Equal shard sizes keep the ranks' generate forwards in lockstep; padding rows are not counted.
        padded = mine + [mine[0] if mine else 0] * (per_rank - len(mine))
        score = answer_accuracy(self.model, self.tokenizer, [self.eval_set[i] for i in padded], refine=refine,
                                max_new_tokens=self.cfg.data.max_new_tokens,
                                batch_size=self.cfg.data.generate_batch_size,
                                counted=[k < len(mine) for k in range(per_rank)], synced_ranks=True)
        totals = all_mean(torch.tensor([score.correct, score.refine_steps, score.chunks])) * w
        key = "accuracy_refined" if refine else "accuracy"
        result = {key: float(totals[0]) / rows}
        if refine:
            result["mean_refinement_steps"] = float(totals[1] / max(totals[2], 1.0))
        return result

    def _save_eval_logits(self) -> None:
        """output_dir/eval_logits.pt: plain (noise-free) logits of the first held-out batch, to check exports."""
        batch = next(self._eval_batches(min(len(self.eval_set), self.cfg.training.batch_size)))
        self.model.eval()
        with torch.no_grad():
            logits = self.model(input_ids=batch["input_ids"].to(self.dist.device),
                                attention_mask=batch["attention_mask"].to(self.dist.device)).logits
        if self.dist.is_main:
            torch.save({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                        "logits": logits.float().cpu()}, os.path.join(self.out_dir, "eval_logits.pt"))


def format_eval(result: dict) -> str:
    """One-line eval summary, or the accuracy table when generation ran."""
    head = f"eval @ step {result['step']}:"
    if "eval_loss" in result:
        head += f" held-out loss {result['eval_loss']:.4f}"
    if "accuracy" not in result:
        return head
    lines = [head, "  | held-out answer accuracy | without refinement | with refinement | mean refinement steps |",
             "  |---|---|---|---|"]
    refined = f"{result['accuracy_refined']:.1%}" if "accuracy_refined" in result else "-"
    steps = f"{result['mean_refinement_steps']:.2f}" if "mean_refinement_steps" in result else "-"
    lines.append(f"  | step {result['step']} | {result['accuracy']:.1%} | {refined} | {steps} |")
    return "\n".join(lines)


def run(cfg: TrainConfig, dist_info: DistInfo) -> Optional[dict]:
    """Train under an exclusive lock of the output folder (global rank 0 holds it), with SIGTERM /
    SIGINT turned into a save-and-stop from the start: a signal during the (possibly slow) setup
    (loading a large backbone, a universal conversion) is honoured once it is done."""
    lock = RunLock(cfg.training.output_dir)
    with StopSignals(announce=dist_info.is_main) as signals:
        try:
            warning = on_main(lock.acquire)
            if warning and dist_info.is_main:
                print(warning, flush=True)
            return Trainer(cfg, dist_info, signals).train()
        finally:
            lock.release()
