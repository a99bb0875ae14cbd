"""The activation store: per-layer states of images x prompt variants, on disk, resumable.

Format (``probekit-store/2``), one directory::

    manifest.json            what the store holds and the cache key it was written for (deterministic
                             content: two processes writing the same store write the same bytes)
    shard-00000.safetensors  images [start, stop) of the dataset, one tensor per variant and quantity:
        hidden/<variant>     [n, L+1, d]  state at the probed position; layer 0 = embedding output,
                                           1..L = decoder blocks (HF ``hidden_states``)
        logprob/<variant>    [n, 2] float32  log-probability of each answer (the variant's ``answers`` order):
                                           its best token sequence, teacher-forced after the prompt
        margin/<variant>     [n] float32  logprob(expected answer) - logprob(the other answer)
        preferred/<variant>  [n] int64    index of the answer the model prefers (the expected one iff margin > 0)
        first_token/<variant> [n] int64   the model's greedy next token after the prompt (for reference)
      header metadata: key_sha256, start, stop, first-token texts (JSON)

(Format 1 stored a first-token logit margin instead of the answer sequences' log-probabilities.)

A store may instead hold **named arrays** (``quantities`` given to :meth:`ActivationStore.create`; no prompt
variants): the manifest lists each quantity's per-item shape, each shard holds ``<name>`` ``[n, *shape]``
for images [start, stop), and :meth:`ActivationStore.array` reads them back. Paper B's image key / value tokens
(:func:`probekit.extract.kv.extract_image_tokens`) are stored this way; cache key, atomic shards, resume and the
never-mixed rule are the same.

Writes are atomic (temporary file + ``os.replace``), so a shard file either exists whole or not at all; a
run killed at any moment and run again computes only the missing shards. A store is never mixed across
cache keys: opening it for a different key raises :class:`StoreError` naming what differs.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import StoreError
from .prompts import Variant

FORMAT = "probekit-store/2"
MANIFEST = "manifest.json"
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def key_sha256(key, length: int | None = None) -> str:
    """The one cache key of probekit: sha256 over ``key`` as sorted JSON (non-JSON values by ``str``), optionally
    cut to its first ``length`` hex digits (cache folder names)."""
    h = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    return h[:length] if length else h


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that the file is either the old one or the whole new one (temporary file,
    fsync, rename), whatever moment the process is killed at."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    with open(root / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _diff(old: Mapping, new: Mapping, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += _diff(a, b, f"{prefix}{k}.")
        elif a != b:
            show = lambda v: (repr(v)[:77] + "...") if len(repr(v)) > 80 else repr(v)  # noqa: E731
            out.append(f"{prefix}{k}: store has {show(a)}, requested {show(b)}")
    return out


@dataclass
class ActivationStore:
    """Reader (and, through :meth:`create`, writer) of one store directory."""

    root: Path
    manifest: dict

    # ---- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | Path) -> "ActivationStore":
        root = Path(root)
        mpath = root / MANIFEST
        if not mpath.is_file():
            raise StoreError(f"{str(root)!r} is not an activation store (no {MANIFEST}); run `probekit extract` first")
        try:
            manifest = json.loads(mpath.read_text())
        except json.JSONDecodeError as e:
            raise StoreError(f"{str(mpath)!r} is damaged ({e}); delete the store directory and extract again") from None
        if manifest.get("format") != FORMAT:
            raise StoreError(f"{str(root)!r} has format {manifest.get('format')!r}, this probekit reads {FORMAT!r}")
        return cls(root, manifest)

    @classmethod
    def open_complete(cls, root: str | Path, key: Mapping | None = None) -> "ActivationStore | None":
        """The store at ``root`` when it is there, readable and complete, and (with ``key``) written for exactly that
        key; otherwise None. Raises nothing: this is how a re-run finds out, without a model, whether it is done."""
        try:
            store = cls.open(root)
        except StoreError:
            return None
        if key is not None and store.manifest["key_sha256"] != key_sha256(dict(key)):
            return None
        return store if store.is_complete() else None

    @classmethod
    def create(cls, root: str | Path, *, key: Mapping, variants: Sequence[Variant], n_items: int, ids: Sequence[str],
               labels: Sequence[int], classes: Sequence[str], n_layers: int, hidden_size: int,
               storage_dtype: str = "float32", shard_size: int = 64, extra: Mapping | None = None,
               quantities: Mapping[str, Sequence[int]] | None = None) -> "ActivationStore":
        """Create the store, or re-open it when it was made for the same key (resume).

        A store made for another key raises StoreError listing the differences (never mixed). ``quantities``
        (name -> per-item shape) makes a store of named arrays (written by :meth:`write_arrays`, read by
        :meth:`array`) instead of per-variant states; ``variants`` may then be empty.
        """
        if storage_dtype not in STORAGE_DTYPES:
            raise StoreError(f"unknown storage dtype {storage_dtype!r}; use one of {', '.join(STORAGE_DTYPES)}")
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise StoreError(f"store path {str(root)!r} is a file; pass a directory path")
        root.mkdir(parents=True, exist_ok=True)
        key = json.loads(json.dumps(dict(key)))
        manifest = {
            "format": FORMAT,
            "key": key,
            "key_sha256": key_sha256(key),
            "variants": [v.to_dict() for v in variants],
            "n_items": int(n_items),
            "ids": list(ids),
            "labels": [int(y) for y in labels],
            "classes": list(classes),
            "n_layers": int(n_layers),
            "hidden_size": int(hidden_size),
            "storage_dtype": storage_dtype,
            "shard_size": int(shard_size),
            "extra": dict(extra or {}),
        }
        if quantities is not None:  # only array stores carry the field: state stores' manifests are unchanged
            bad = [k for k, v in quantities.items() if not k or "/" in k or any(int(x) < 1 for x in v)]
            if not quantities or bad:
                raise StoreError(f"quantities must be non-empty names without '/' with positive shapes; got {bad or '{}'}")
            manifest["quantities"] = {k: [int(x) for x in v] for k, v in quantities.items()}
        with _locked(root):
            mpath = root / MANIFEST
            if mpath.is_file():
                old = cls.open(root).manifest
                if (old["key_sha256"] != manifest["key_sha256"] or old["shard_size"] != shard_size
                        or old.get("quantities") != manifest.get("quantities")):
                    diffs = (_diff(old["key"], key) or _diff({"quantities": old.get("quantities")},
                                                            {"quantities": manifest.get("quantities")})
                             or [f"shard_size: store has {old['shard_size']}, requested {shard_size}"])
                    raise StoreError(
                        f"the store at {str(root)!r} was written for different settings, so it is not reused:\n  "
                        + "\n  ".join(diffs)
                        + "\nuse another output directory, or delete this one to recompute"
                    )
            else:
                atomic_write_bytes(mpath, json.dumps(manifest, indent=1, sort_keys=True).encode())
        store = cls(root, manifest)
        store.clean_stale_temporaries()
        return store

    # ---- layout ----------------------------------------------------------------------------------
    @property
    def variants(self) -> list[Variant]:
        return [Variant(**{**v, "answers": tuple(v["answers"])}) for v in self.manifest["variants"]]

    @property
    def variant_names(self) -> list[str]:
        return [v["name"] for v in self.manifest["variants"]]

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self.manifest["labels"], dtype=np.int64)

    @property
    def ids(self) -> list[str]:
        return list(self.manifest["ids"])

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def n_layers(self) -> int:
        """Number of stored layers (L+1: the embedding output and every decoder block)."""
        return int(self.manifest["n_layers"])

    @property
    def key(self) -> dict:
        return self.manifest["key"]

    @property
    def quantities(self) -> dict[str, tuple[int, ...]]:
        """Per-item shape of each named array (empty for a store of per-variant states)."""
        return {k: tuple(v) for k, v in self.manifest.get("quantities", {}).items()}

    @property
    def extra(self) -> dict:
        return dict(self.manifest.get("extra", {}))

    def shard_ranges(self) -> list[tuple[int, int]]:
        n, s = self.manifest["n_items"], self.manifest["shard_size"]
        return [(i, min(i + s, n)) for i in range(0, n, s)]

    def shard_path(self, index: int) -> Path:
        return self.root / f"shard-{index:05d}.safetensors"

    def missing_shards(self) -> list[int]:
        return [i for i in range(len(self.shard_ranges())) if not self._shard_ok(i)]

    def is_complete(self) -> bool:
        return not self.missing_shards()

    def _shard_ok(self, i: int) -> bool:
        p = self.shard_path(i)
        if not p.is_file():
            return False
        try:
            with safe_open(p, framework="pt") as f:
                meta = f.metadata() or {}
        except Exception:  # a damaged shard is treated as missing and recomputed
            return False
        return meta.get("key_sha256") == self.manifest["key_sha256"] and (
            int(meta.get("start", -1)), int(meta.get("stop", -1))) == self.shard_ranges()[i]

    def clean_stale_temporaries(self) -> None:
        for p in self.root.glob(".*.tmp-*"):
            pid = p.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not _pid_alive(int(pid)):
                p.unlink(missing_ok=True)

    # ---- writing ---------------------------------------------------------------------------------
    def write_shard(self, index: int, hidden: Mapping[str, torch.Tensor], first_token: Mapping[str, torch.Tensor],
                    logprob: Mapping[str, torch.Tensor], first_token_text: Mapping[str, list[str]]) -> None:
        """Write shard ``index`` atomically. Each mapping is keyed by variant name; ``logprob`` [n, 2] holds each
        answer's log-probability (margin and preferred answer are derived from it here, so they always agree)."""
        start, stop = self.shard_ranges()[index]
        n, names = stop - start, self.variant_names
        if set(hidden) != set(names):
            raise StoreError(f"shard {index}: variants {sorted(hidden)} do not match the store's {sorted(names)}")
        dtype = STORAGE_DTYPES[self.manifest["storage_dtype"]]
        tensors = {}
        for v in self.variants:
            h = hidden[v.name]
            want = (n, self.n_layers, self.manifest["hidden_size"])
            if tuple(h.shape) != want:
                raise StoreError(f"shard {index}, variant {v.name!r}: hidden has shape {tuple(h.shape)}, expected {want}")
            lp = logprob[v.name].detach().to("cpu", torch.float32).contiguous()
            if tuple(lp.shape) != (n, 2):
                raise StoreError(f"shard {index}, variant {v.name!r}: logprob has shape {tuple(lp.shape)}, "
                                 f"expected {(n, 2)}")
            e = v.answers.index(v.expected)
            margin = lp[:, e] - lp[:, 1 - e]
            tensors[f"hidden/{v.name}"] = h.detach().to("cpu", dtype).contiguous()
            tensors[f"logprob/{v.name}"] = lp
            tensors[f"margin/{v.name}"] = margin
            tensors[f"preferred/{v.name}"] = torch.where(margin > 0, e, 1 - e).to(torch.int64)
            tensors[f"first_token/{v.name}"] = first_token[v.name].detach().to("cpu", torch.int64).contiguous()
        self._save(index, tensors, {"first_token_text": json.dumps({v: list(first_token_text[v]) for v in names})})

    def write_arrays(self, index: int, arrays: Mapping[str, torch.Tensor]) -> None:
        """Write shard ``index`` of a store of named arrays atomically: every quantity, ``[n, *shape]``."""
        want = self.quantities
        if not want:
            raise StoreError(f"the store at {str(self.root)!r} holds per-variant states, not named arrays; "
                             "use write_shard")
        if set(arrays) != set(want):
            raise StoreError(f"shard {index}: arrays {sorted(arrays)} do not match the store's {sorted(want)}")
        start, stop = self.shard_ranges()[index]
        dtype = STORAGE_DTYPES[self.manifest["storage_dtype"]]
        tensors = {}
        for name, shape in want.items():
            t = torch.as_tensor(arrays[name])
            if tuple(t.shape) != (stop - start, *shape):
                raise StoreError(f"shard {index}, {name!r}: shape {tuple(t.shape)}, expected {(stop - start, *shape)}")
            tensors[name] = t.detach().to("cpu", dtype).contiguous()
        self._save(index, tensors, {})

    def _save(self, index: int, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, str]) -> None:
        start, stop = self.shard_ranges()[index]
        meta = {"key_sha256": self.manifest["key_sha256"], "start": str(start), "stop": str(stop), **meta}
        path = self.shard_path(index)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        save_file(dict(tensors), str(tmp), metadata=meta)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)

    # ---- reading ---------------------------------------------------------------------------------
    def _require_complete(self) -> None:
        missing = self.missing_shards()
        if missing:
            raise StoreError(
                f"the store at {str(self.root)!r} is incomplete ({len(missing)} of {len(self.shard_ranges())} shards "
                "missing); re-run the same `probekit extract` command to finish it"
            )

    def _variant(self, variant: str | Variant) -> str:
        name = variant.name if isinstance(variant, Variant) else variant
        if name not in self.variant_names:
            raise StoreError(f"unknown variant {name!r}; the store has {', '.join(self.variant_names)}")
        return name

    def _layer(self, layer: int) -> int:
        L = self.n_layers
        if not isinstance(layer, (int, np.integer)) or not -L <= layer < L:
            raise StoreError(f"layer {layer!r} is out of range: the store holds layers 0..{L - 1} (0 = embedding output)")
        return int(layer) % L

    def features(self, variant: str | Variant, layer: int | None = None) -> np.ndarray:
        """float32 array [n, d] for one layer, or [n, L+1, d] for all layers, of one variant."""
        self._require_complete()
        name = self._variant(variant)
        li = None if layer is None else self._layer(layer)
        parts = []
        for i in range(len(self.shard_ranges())):
            with safe_open(self.shard_path(i), framework="pt") as f:
                sl = f.get_slice(f"hidden/{name}")
                t = sl[:, li, :] if li is not None else sl[:]
                parts.append(t.to(torch.float32).numpy())
        return np.concatenate(parts, axis=0)

    def array(self, name: str, index: int | None = None) -> np.ndarray:
        """float32 array ``[n, *shape]`` of one named quantity, or with ``index`` its slice ``[n, *shape[1:]]``
        at that position of the first per-item axis (e.g. one stored layer), read without loading the rest."""
        self._require_complete()
        q = self.quantities
        if name not in q:
            have = ", ".join(q) if q else "no named arrays (a store of per-variant states)"
            raise StoreError(f"unknown quantity {name!r}; the store at {str(self.root)!r} has {have}")
        if index is not None:
            n0 = q[name][0]
            if not isinstance(index, (int, np.integer)) or not -n0 <= index < n0:
                raise StoreError(f"index {index!r} of {name!r} is out of range 0..{n0 - 1}")
            index = int(index) % n0
        parts = []
        for i in range(len(self.shard_ranges())):
            with safe_open(self.shard_path(i), framework="pt") as f:
                sl = f.get_slice(name)
                t = sl[:, index] if index is not None else sl[:]
                parts.append(t.to(torch.float32).numpy())
        return np.concatenate(parts, axis=0)

    def answers(self) -> "pandas.DataFrame":  # noqa: F821
        """One row per (image, variant): id, label, class, variant, family, expected, preferred (the answer the
        model prefers), logprob_expected, logprob_other, margin (their difference), correct (preferred ==
        expected), first_token (greedy, decoded)."""
        import pandas as pd

        self._require_complete()
        rows = []
        ids, labels, classes = self.ids, self.labels, self.classes
        for i, (start, _) in enumerate(self.shard_ranges()):
            with safe_open(self.shard_path(i), framework="pt") as f:
                texts = json.loads(f.metadata()["first_token_text"])
                for v in self.variants:
                    e = v.answers.index(v.expected)
                    lp = f.get_tensor(f"logprob/{v.name}").numpy()
                    pref = f.get_tensor(f"preferred/{v.name}").numpy()
                    for j, (p, t) in enumerate(zip(pref, texts[v.name])):
                        k = start + j
                        rows.append({"id": ids[k], "label": int(labels[k]), "class": classes[labels[k]],
                                     "variant": v.name, "family": v.family, "expected": v.expected,
                                     "preferred": v.answers[int(p)], "logprob_expected": float(lp[j, e]),
                                     "logprob_other": float(lp[j, 1 - e]), "margin": float(lp[j, e] - lp[j, 1 - e]),
                                     "correct": bool(p == e), "first_token": t})
        return pd.DataFrame(rows)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
