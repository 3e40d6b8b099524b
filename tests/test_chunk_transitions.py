"""Chunk transitions (replace, blend, inpaint, soft_inpaint), the boundary-jump measure and inference_lead auto."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dp_runtime.control import ActionQueue, PolicyRunner, RunnerConfig, simulated
from dp_runtime.control.continuity import BoundaryJumps
from dp_runtime.errors import BundleError, ConfigError, ShapeError
from dp_runtime.holds import early_steps, every_step
from test_control import SPEC, FakeEngine, feed


def test_blend_cross_fades_where_old_and_new_overlap():
    q = ActionQueue(dt=0.1)
    q.push(np.zeros((6, 1)), 1.0, 1.0)  # old chunk: 0.0 due 1.0 .. 1.5
    q.push(np.ones((6, 1)), 1.2, 1.2, blend=3)  # new chunk: 1.0 due 1.2 .. 1.7
    got = [float(a[0]) for _, a in q.remaining()]
    # overlap at 1.2, 1.3, 1.4 (blended 1/4, 2/4, 3/4), 1.5 past the blend length, then only new actions
    assert got == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    q.push(np.full((3, 1), 5.0), 2.5, 2.5, blend=3)  # no overlap in due time: nothing to blend
    assert [float(a[0]) for _, a in q.remaining()] == [5.0, 5.0, 5.0]


def test_boundary_jump_ratio_on_hand_made_chunks():
    j = BoundaryJumps()
    for chunk, values in enumerate([[0.0, 0.1, 0.2, 0.3], [0.8, 0.9, 1.0, 1.1]]):
        for v in values:
            j.add(np.array([v, 2 * v]), chunk)
    # inside: steps of 0.1 (dim 0) and 0.2 (dim 1); the switch jumps 0.5 and 1.0: five times each
    assert j.switches == 1 and j.ratio() == pytest.approx(5.0)
    other = BoundaryJumps()  # a second episode that only moves inside its chunk
    for v in (0.0, 0.1, 0.2):
        other.add(np.array([v, 2 * v]), 0)
    pooled = BoundaryJumps.pooled([j, other, BoundaryJumps()])
    assert pooled.switches == 1 and pooled.steps_inside == 8 and pooled.ratio() == pytest.approx(5.0)
    j.break_sequence()  # after a stop the next action is no switch
    j.add(np.array([9.0, 9.0]), 2)
    assert j.switches == 1


class LatencyEngine(FakeEngine):
    def __init__(self, latencies):
        super().__init__()
        self.latencies = list(latencies)

    def predict(self, history, seed=None, known=None, mask=None, hold=None, noise=None):
        pred = super().predict(history, seed)
        pred.latency_s = self.latencies.pop(0)
        return pred


def test_auto_lead_follows_the_measured_latency():
    eng = LatencyEngine([0.05] * 10 + [0.25] * 10)
    r = PolicyRunner(eng, RunnerConfig(control_rate_hz=10, inference_lead="auto"))
    eng.warmup_latency_s = 0.12
    assert r.inference_lead() == 3  # before any chunk: from the warm-up, ceil(0.12 / 0.1) + 1
    for k in range(10):
        feed(r, 1.0 + k, v=float(k))
        r.infer(1.0 + k)
    assert r.inference_lead() == 2  # p95 of 50 ms: ceil(0.5) + 1
    for k in range(10, 20):
        feed(r, 1.0 + k, v=float(k))
        r.infer(1.0 + k)
    assert r.inference_lead() == 3  # 250 ms -> 4 clamped to n_action_steps - 1 = 3
    assert r.status(20.0).values()["inference_lead"] == "3"
    fixed = PolicyRunner(FakeEngine(), RunnerConfig(inference_lead=2))
    assert fixed.inference_lead() == 2


class RecordingEngine(FakeEngine):
    can_inpaint = True

    def __init__(self):
        super().__init__()
        self.inpaint_calls = []
        self.holds = []

    def predict(self, history, seed=None, known=None, mask=None, hold=None, noise=None):
        self.inpaint_calls.append((known, mask))
        self.holds.append(hold)
        return super().predict(history, seed)


def test_inpaint_commits_the_actions_that_execute_before_the_new_chunk_arrives():
    eng = RecordingEngine()
    r = PolicyRunner(eng, RunnerConfig(control_rate_hz=10, inference_lead=3, chunk_transition="inpaint",
                                       execution_latency=0.2), delivery=simulated(0.0))
    feed(r, 1.0, v=10.0)
    r.infer(1.0)
    assert eng.inpaint_calls[0] == (None, None)  # nothing queued yet: nothing to hold fixed
    r.tick(1.0)  # arrives; 11, 12 (due 1.0, 1.1) are inside the execution latency: 13, 14 remain
    feed(r, 1.1, v=20.0)
    rec = r.infer(1.1)
    known, mask = eng.inpaint_calls[1]
    # The new chunk can act from 1.1 + 0.2 = 1.3: 13 (due 1.2) and 14 (due 1.3) will have executed.
    # On its horizon (t_obs 1.1, executed from index 1) they sit at 1 + 1 and 1 + 2.
    assert list(np.flatnonzero(mask)) == [2, 3]
    assert known[2, 0] == pytest.approx(13.0) and known[3, 0] == pytest.approx(14.0)
    assert rec.committed == 2


def test_soft_inpaint_freezes_what_inpaint_commits_and_weights_the_previous_plan_by_decay():
    calls, holds = {}, {}
    for mode in ("inpaint", "soft_inpaint", "soft_inpaint_early"):
        eng = RecordingEngine()
        r = PolicyRunner(eng, RunnerConfig(control_rate_hz=10, inference_lead=3, chunk_transition=mode,
                                           execution_latency=0.2, inpaint_decay=0.5), delivery=simulated(0.0))
        feed(r, 1.0, v=10.0)
        r.infer(1.0)  # plans 10 .. 17 on slots 0 .. 7, slot k due 1.0 + (k - 1) * 0.1
        r.tick(1.0)
        feed(r, 1.1, v=20.0)
        rec = r.infer(1.1)  # can act from 1.3: 13 and 14 are frozen, as with inpaint
        calls[mode], holds[mode] = eng.inpaint_calls[1], eng.holds[1]
        assert rec.committed == 2
    (hard_known, hard_mask), (known, weights) = calls["inpaint"], calls["soft_inpaint"]
    assert weights.dtype == np.float32 and hard_mask.dtype == bool
    frozen = weights == 1.0
    assert np.array_equal(frozen, hard_mask) and np.array_equal(known[frozen], hard_known[hard_mask])
    # after arrival, the previous plan's slots due 1.4, 1.5, 1.6 (15, 16, 17) at 0.5, 0.25, 0.125; it ends there
    assert weights.tolist() == [0, 0, 1, 1, 0.5, 0.25, 0.125, 0]
    assert known[2:7, 0].tolist() == [13, 14, 15, 16, 17]
    # soft_inpaint_early commits the same weights and asks the engine to hold them through the early steps
    early_known, early_weights = calls["soft_inpaint_early"]
    assert np.array_equal(early_known, known) and np.array_equal(early_weights, weights)
    assert holds["soft_inpaint"] is every_step and holds["soft_inpaint_early"] is early_steps


def test_soft_inpaint_early_holds_each_weight_for_its_share_of_the_steps():
    """Weight w holds its action fully through the first ceil(w * steps) DDIM steps (noisiest first), then
    frees it; weight 1 (the frozen prefix) every step, 0 none; every_step gives the weights themselves."""
    weights = np.array([0, 1, 1, 0.8, 0.64, 0.512, 0.05, 0], np.float32)
    masks = early_steps(weights, 16)
    held = np.sum(masks, axis=0)
    assert held.tolist() == [0, 16, 16, 13, 11, 9, 1, 0]
    for i, m in enumerate(masks):  # fully held or free, the held ones the first steps
        assert set(np.unique(m)) <= {0.0, 1.0}
        assert (m == (held > i)).all()
    assert masks[15] is masks[14]  # an unchanged mask is the same object (a backend rebinds only changes)
    assert all(m is weights for m in every_step(weights, 16))


def test_soft_inpaint_early_needs_an_engine_that_changes_the_mask_per_step():
    class OneMaskEngine(RecordingEngine):
        masks_per_step = False
    PolicyRunner(OneMaskEngine(), RunnerConfig(chunk_transition="soft_inpaint"))  # one mask for every step: fine
    with pytest.raises(ConfigError, match="soft_inpaint_early changes the inpainting mask between DDIM steps.*"
                                          "backend onnxruntime or torchscript"):
        PolicyRunner(OneMaskEngine(), RunnerConfig(chunk_transition="soft_inpaint_early"))


def test_soft_inpaint_settings_are_checked():
    for bad in (0.0, 1.0, -0.2, 1.5):
        with pytest.raises(ConfigError, match=r"inpaint_decay must be a number \(> 0; < 1\) or 'auto'"):
            RunnerConfig(chunk_transition="soft_inpaint", inpaint_decay=bad)
    with pytest.raises(ConfigError, match=r"inpaint_decay must be a number \(> 0; < 1\) or 'auto', got 'fast'"):
        RunnerConfig(inpaint_decay="fast")
    with pytest.raises(ConfigError, match="soft_inpaint needs a bundle with the inpainting step graph.*--inpaint"):
        PolicyRunner(FakeEngine(), RunnerConfig(chunk_transition="soft_inpaint"))
    with pytest.raises(ConfigError, match="chunk_transition must be one of auto, replace, blend, inpaint, soft_inpaint"):
        RunnerConfig(chunk_transition="soft")


def test_auto_picks_the_best_the_engine_runs_and_says_why():
    """chunk_transition and chunk_noise auto (the defaults): soft_inpaint_early with aligned noise where the
    engine can; soft_inpaint where the mask is one for all steps (compiled, remote); blend without the
    inpainting graph; fresh noise where the engine draws its own. The fallback is named in the log line."""
    class Inpainting(RecordingEngine):
        pass

    class OneMask(RecordingEngine):
        masks_per_step = False
        takes_noise = False

    cases = {Inpainting: ("soft_inpaint_early", "aligned"), OneMask: ("soft_inpaint", "fresh"),
             FakeEngine: ("blend", "aligned")}
    for engine, (mode, noise) in cases.items():
        r = PolicyRunner(engine(), RunnerConfig())
        assert (r.transition.name, r.noise.__name__) == (mode, noise)
        assert r.settings_line.startswith(f"chunk_transition auto: {mode}")
    line = PolicyRunner(FakeEngine(), RunnerConfig()).settings_line
    assert "(passed over: soft_inpaint_early needs a bundle with the inpainting step graph; re-export it with dp-export " \
           "--inpaint" in line
    assert "DDIM steps" in PolicyRunner(OneMask(), RunnerConfig()).settings_line
    assert "chunk_noise auto: fresh (OneMask draws each chunk's noise itself)" in \
           PolicyRunner(OneMask(), RunnerConfig()).settings_line
    explicit = PolicyRunner(Inpainting(), RunnerConfig(chunk_transition="replace", chunk_noise="fresh"))
    assert explicit.settings_line == "chunk_transition replace; chunk_noise fresh"
    defaults = RunnerConfig()
    assert (defaults.chunk_transition, defaults.chunk_noise, defaults.inpaint_decay, defaults.inference_lead) == \
        ("auto", "auto", "auto", "auto")
    # inpaint_decay auto: each soft transition's measured value; a number overrides it
    assert PolicyRunner(Inpainting(), defaults).decay == 0.9
    assert "inpaint_decay auto: 0.9" in PolicyRunner(Inpainting(), defaults).settings_line
    assert PolicyRunner(OneMask(), defaults).decay == 0.6
    assert PolicyRunner(Inpainting(), RunnerConfig(inpaint_decay=0.5)).decay == 0.5


def test_delivery_delay_keeps_the_old_chunk_running_until_the_new_one_arrives():
    r = PolicyRunner(FakeEngine(), RunnerConfig(control_rate_hz=10, inference_lead=2),
                     delivery=simulated(0.0, 0.2))
    feed(r, 1.0, v=10.0)
    r.infer(1.0)
    assert r.tick(1.1) is None  # in flight until 1.2
    assert r.tick(1.2)[0] == 13.0  # arrived at 1.2: 11 and 12 fell due before it
    feed(r, 1.3, v=20.0)
    assert r.needs_inference()
    r.infer(1.3)  # arrives at 1.5; the old chunk runs on meanwhile
    assert not r.needs_inference()  # one chunk in flight at a time
    assert r.tick(1.3)[0] == 14.0
    assert r.tick(1.5)[0] == 23.0


def test_bad_transition_settings_are_refused_by_name():
    with pytest.raises(ConfigError, match="chunk_transition must be one of .*'morph'"):
        RunnerConfig(chunk_transition="morph")
    with pytest.raises(ConfigError, match="blend_actions must be >= 0"):
        RunnerConfig(chunk_transition="blend", blend_actions=-1)
    with pytest.raises(ConfigError, match="inference_lead must be an integer >= 0 or 'auto'"):
        RunnerConfig(inference_lead="soon")
    with pytest.raises(ConfigError, match="re-export it with dp-export --inpaint"):
        PolicyRunner(FakeEngine(), RunnerConfig(chunk_transition="inpaint"))


# -- the exported inpainting graph ---------------------------------------------------------------------------

def _obs(cfg, seed):
    from dp_runtime.export.bundle import example_inputs
    return example_inputs(cfg, 1, np.random.default_rng(seed))


@pytest.mark.parametrize("backend", ["onnxruntime", "torchscript"])
def test_inpaint_holds_the_committed_prefix_and_matches_the_torch_reference(tiny_bundle, tiny_ckpt, backend):
    from dp_runtime.checkpoint import load_checkpoint
    from dp_runtime.engine import load_bundle
    engine = load_bundle(tiny_bundle, backend=backend)
    policy = load_checkpoint(tiny_ckpt).policy
    spec = engine.bundle.graph_set("onnx" if backend == "onnxruntime" else "torchscript")
    assert spec.inpaint_step and spec.inpaint_max_abs_error <= 1e-4
    rng = np.random.default_rng(4)
    obs = {k: v[0] for k, v in _obs(policy, 1).items()}
    noise = rng.standard_normal((8, 2)).astype(np.float32)
    known = rng.uniform(-0.5, 0.5, (8, 2)).astype(np.float32)
    mask = np.zeros(8, bool)
    mask[:3] = True
    got = engine.predict(obs, noise=noise, known=known, mask=mask).actions
    assert np.abs(got[mask] - known[mask]).max() <= 1e-5  # the committed prefix is held fixed
    ref = policy.sample({k: torch.from_numpy(v[None]) for k, v in obs.items()}, torch.from_numpy(noise[None]),
                        known=torch.from_numpy(known[None]), mask=torch.from_numpy(mask[None])).numpy()[0]
    scale = policy.normalizer.params["action"].scale.abs().numpy()
    assert (np.abs(got - ref) * scale).max() <= 1e-4
    # replace is untouched: the plain step graph gives what it always gave
    plain = engine.predict(obs, noise=noise).actions
    ref_plain = policy.sample({k: torch.from_numpy(v[None]) for k, v in obs.items()},
                              torch.from_numpy(noise[None])).numpy()[0]
    assert (np.abs(plain - ref_plain) * scale).max() <= 1e-4
    assert np.abs(plain[mask] - known[mask]).max() > 1e-2  # and without inpainting the prefix is free


@pytest.mark.parametrize("hold", [every_step, early_steps])
@pytest.mark.parametrize("backend", ["onnxruntime", "torchscript"])
def test_soft_mask_freezes_the_prefix_and_matches_the_torch_reference(tiny_bundle, tiny_ckpt, backend, hold):
    """soft_inpaint's weights run through the same inpainting graph: weight 1 is held exactly, the rest
    mixes (every_step) or is held for its share of the steps (early_steps, soft_inpaint_early) as the eager
    reference (DiffusionPolicy.sample with float weights and the same hold) does."""
    from dp_runtime.checkpoint import load_checkpoint
    from dp_runtime.engine import load_bundle
    engine = load_bundle(tiny_bundle, backend=backend)
    policy = load_checkpoint(tiny_ckpt).policy
    scale = policy.normalizer.params["action"].scale.abs().numpy()
    rng = np.random.default_rng(6)
    for trial in range(3):
        obs = {k: v[0] for k, v in _obs(policy, 10 + trial).items()}
        noise = rng.standard_normal((8, 2)).astype(np.float32)
        known = rng.uniform(-0.5, 0.5, (8, 2)).astype(np.float32)
        weights = np.array([0, 1, 1, 0.75, 0.5625, 0.42, 0, 0], np.float32)
        got = engine.predict(obs, noise=noise, known=known, mask=weights, hold=hold).actions
        assert np.abs(got[1:3] - known[1:3]).max() <= 1e-5  # the frozen prefix
        ref = policy.sample({k: torch.from_numpy(v[None]) for k, v in obs.items()}, torch.from_numpy(noise[None]),
                            known=torch.from_numpy(known[None]), mask=torch.from_numpy(weights[None]),
                            hold=hold).numpy()[0]
        assert (np.abs(got - ref) * scale).max() <= 1e-4
        hard = engine.predict(obs, noise=noise, known=known, mask=weights == 1).actions
        assert np.abs(got[3:6] - hard[3:6]).max() > 1e-3  # the weights do pull the guided slots
    with pytest.raises(ShapeError, match=r"mask weights must be in \[0, 1\], got -0.5 .. 1"):
        engine.predict(obs, noise=noise, known=known, mask=np.array([1, -0.5, 0, 0, 0, 0, 0, 0], np.float32))


def test_the_eager_engine_keeps_a_soft_mask_soft(tiny_ckpt):
    """The benches' eager engine (sim.evaluate.TorchPolicyEngine) passes soft_inpaint's weights as weights: a
    bool cast would hold every weighted slot fully (hard inpainting of the whole overlap)."""
    from dp_runtime.checkpoint import load_checkpoint
    from dp_runtime.sim.evaluate import TorchPolicyEngine
    policy = load_checkpoint(tiny_ckpt).policy
    obs = {k: v[0] for k, v in _obs(policy, 3).items()}
    known = np.random.default_rng(2).uniform(-0.5, 0.5, (8, 2)).astype(np.float32)
    weights = np.array([0, 1, 1, 0.5, 0.25, 0.125, 0, 0], np.float32)
    got = TorchPolicyEngine(policy).predict(obs, seed=5, known=known, mask=weights).actions
    noise = torch.randn((1, 8, 2), generator=torch.Generator().manual_seed(5))
    tobs = {k: torch.from_numpy(v[None]) for k, v in obs.items()}
    ref = policy.sample(tobs, noise, known=torch.from_numpy(known[None]), mask=torch.from_numpy(weights[None]))[0]
    hard = policy.sample(tobs, noise, known=torch.from_numpy(known[None]), mask=torch.from_numpy(weights[None] > 0))[0]
    assert np.abs(got - ref.numpy()).max() <= 1e-6
    assert np.abs(got[3:6] - hard.numpy()[3:6]).max() > 1e-3


def test_bundle_without_inpaint_graph_refuses_inpaint(tmp_path, tiny_ckpt):
    from dp_runtime.engine import load_bundle
    from dp_runtime.export import ExportOptions, export_bundle
    out = export_bundle(tiny_ckpt, tmp_path / "plain", ExportOptions(formats=("onnx",), parity_samples=1,
                                                                      inpaint=False))
    engine = load_bundle(out)
    assert not engine.can_inpaint
    with pytest.raises(BundleError, match="re-export it with dp-export --inpaint"):
        engine.predict({"camera": np.zeros((2, 24, 24, 3), np.uint8), "state": np.zeros((2, 2), np.float32)},
                       known=np.zeros((8, 2)), mask=np.ones(8, bool))
    with pytest.raises(ConfigError, match="--inpaint"):
        PolicyRunner(engine, RunnerConfig(chunk_transition="inpaint"))


def test_an_arrived_chunk_lets_the_next_inference_start_in_the_same_tick():
    """On a simulated clock the loop asks needs_inference(now) before tick(now): a chunk due by now is
    delivered first, so a saturated pipeline (delay = half a chunk) never runs the queue dry."""
    r = PolicyRunner(FakeEngine(), RunnerConfig(control_rate_hz=10, inference_lead=2),
                     delivery=simulated(0.0, 0.2))
    feed(r, 1.0, v=10.0)
    r.infer(1.0)
    feed(r, 1.15, v=20.0)
    assert r.needs_inference(1.2)  # the chunk arrived at 1.2 (13, 14 left <= lead 2): next one starts now
    assert r.tick(1.2)[0] == 13.0


def test_committed_actions_keep_their_order_when_the_grids_are_half_a_period_apart():
    from collections import deque
    eng = RecordingEngine()
    r = PolicyRunner(eng, RunnerConfig(control_rate_hz=10, inference_lead=3, chunk_transition="inpaint",
                                       execution_latency=0.35), delivery=simulated(0.0))
    r.queue.items = deque((1.1 + i * 0.1, np.array([float(i), 0.0])) for i in range(4))  # due 1.1 .. 1.4
    feed(r, 1.05, v=20.0)
    r.infer(1.05)  # arrives by 1.4: all four committed, 0.5, 1.5, 2.5 and 3.5 periods after t_obs
    known, mask = eng.inpaint_calls[-1]
    assert list(np.flatnonzero(mask)) == [2, 3, 4, 5]  # round-half-to-even would give 1, 3, 3, 5
    assert list(known[2:6, 0]) == [0.0, 1.0, 2.0, 3.0]


def test_no_slot_is_left_free_between_the_frozen_prefix_and_the_guided_plan():
    """The old and new grids are offset by the camera phase: a slot due just before the expected arrival may
    have no committed action on it. It is guided by the previous plan like the slots after it (left free,
    the new chunk jumped there: boundary_jump_ratio 1.47 -> 0.80 on reach at 4 periods of delay)."""
    from collections import deque

    from dp_runtime.control.transitions import Plan, frozen_then_decaying
    q = ActionQueue(0.1)
    q.items = deque((1.13 + i * 0.1, np.array([float(i), 0.0])) for i in range(4))  # due 1.13 .. 1.43
    previous = Plan(0.93, np.arange(8, dtype=np.float32)[:, None].repeat(2, axis=1) * 10)  # queued 1.13 = slot 3
    # new observation at 1.0 (slot k due 1.0 + (k - 1) * 0.1), arrival expected at 1.41: 1.13, 1.23, 1.33 are
    # committed on slots 2, 3, 4; 1.43 (on slot 5 as well) is due after arrival, slot 5 itself (1.4) before it
    known, weights = frozen_then_decaying(q, SPEC, 1.0, 1.41, previous, 0.5)
    assert np.flatnonzero(weights == 1).tolist() == [2, 3, 4]
    assert weights[5:].tolist() == [0.5, 0.25, 0]  # slot 5 guided, then 6; the previous plan ends there
    assert known[5:, 0].tolist() == [60, 70, 0]  # slot 5 (1.4) is the previous plan's slot 6 (0.93 + 0.5); 7 ends it
    # the queue ran dry long before arrival (half a chunk of delay and more): the robot held still, so the
    # previous plan's timing does not hold across the gap; guidance starts after arrival, as it always did
    q.items = deque((1.13 + i * 0.1, np.array([float(i), 0.0])) for i in range(2))  # due 1.13, 1.23
    known, weights = frozen_then_decaying(q, SPEC, 1.0, 1.45, previous, 0.5)
    assert np.flatnonzero(weights == 1).tolist() == [2, 3] and weights[4:6].tolist() == [0, 0]
    assert weights[6:].tolist() == [0.5, 0] and known[6, 0] == 70  # slot 6 (1.5); the plan ends before slot 7


def test_the_action_executing_now_anchors_a_chunk_that_arrives_before_the_next_tick():
    """A node starts inference between ticks: nothing is due before the chunk arrives, so without an anchor its
    first action would be free to jump from the one the robot executes (DDS boundary_jump_ratio 1.89 on reach).
    RTC's mask starts at weight 1: the action executing now is held, the previous plan guides the rest."""
    from collections import deque

    from dp_runtime.control.transitions import Plan, frozen_then_decaying
    q = ActionQueue(0.1)
    q.items = deque((1.0 + i * 0.1, np.array([float(i), 0.0])) for i in range(3))  # due 1.0, 1.1, 1.2
    previous = Plan(0.9, np.arange(8, dtype=np.float32)[:, None].repeat(2, axis=1) * 10)
    assert q.pop(1.0)[0] == 0.0 and q.last[0] == 1.0
    # observation at 1.0 (slot k due 1.0 + (k - 1) * 0.1); inference from 1.03, arrival expected at 1.05
    known, weights = frozen_then_decaying(q, SPEC, 1.0, 1.05, previous, 0.5)
    assert weights.tolist()[:4] == [0, 1, 0.5, 0.25] and known[1, 0] == 0.0  # slot 1 (1.0): the executing action
    assert known[2, 0] == 30  # slot 2 (1.1) is the previous plan's slot 3 (0.9 + 0.2)
    q.clear()  # a stop, a stale input or a discontinuity: no executing action to hold
    assert q.last is None and frozen_then_decaying(q, SPEC, 1.0, 1.05, previous, 0.5)[1][1:3].tolist() == [0, 0.5]


def test_actions_held_to_the_previous_plan_count_as_its_own_in_the_jump_measure():
    """The switch is where the new chunk first chooses: a bench that infers at the tick commits the action due
    then (held fixed, so its step is the old plan's), a node between ticks commits none; both measure alike."""
    q = ActionQueue(0.1)
    q.push(np.array([[0.0], [1.0], [2.0]]), 1.0, 1.0)
    jumps = BoundaryJumps()
    for t in (1.0, 1.1):
        jumps.add(q.pop(t), q.popped_chunk)
    q.push(np.array([[2.0], [5.0], [6.0]]), 1.2, 1.2, held_until=1.2)  # 2.0 at 1.2 held to the old plan's
    for t in (1.2, 1.3, 1.4):
        jumps.add(q.pop(t), q.popped_chunk)
    assert jumps.switches == 1 and jumps.boundary_sum.tolist() == [3.0]  # 2 -> 5, not 1 -> 2
    assert jumps.steps_inside == 3


def test_aligned_noise_repeats_the_previous_chunks_noise_on_the_same_due_times():
    from dp_runtime.control.chunk_noise import ChunkNoise, aligned, fresh
    previous = ChunkNoise(1.0, np.arange(16, dtype=np.float32).reshape(8, 2))
    # 3 periods later (a camera phase of 0.02 s rounds half up onto the same grid): slot k is previous slot k + 3
    got = aligned(previous, 1.32, 0.1, 9, (8, 2))
    assert np.array_equal(got.noise[:5], previous.noise[3:])
    seed_draw = np.random.default_rng(9).standard_normal((1, 8, 2)).astype(np.float32)[0]
    assert np.array_equal(got.noise[5:], seed_draw[5:])  # beyond the previous horizon: the seed's own noise
    assert np.array_equal(aligned(None, 1.32, 0.1, 9, (8, 2)).noise, seed_draw)  # the first chunk: the seed's
    assert np.array_equal(aligned(previous, 2.0, 0.1, 9, (8, 2)).noise, seed_draw)  # nothing overlaps
    assert fresh(previous, 1.32, 0.1, 9, (8, 2)) is None  # the engine draws from the seed, as always


def test_the_runner_gives_each_chunk_its_aligned_noise_and_forgets_it_on_reset():
    class NoiseEngine(RecordingEngine):
        def predict(self, history, seed=None, known=None, mask=None, hold=None, noise=None):
            self.noises.append(noise)
            return super().predict(history, seed, known, mask, hold)
    for name in ("fresh", "aligned"):
        eng = NoiseEngine()
        eng.noises = []
        r = PolicyRunner(eng, RunnerConfig(control_rate_hz=10, inference_lead=3, chunk_noise=name, seed=5),
                         delivery=simulated(0.0))
        feed(r, 1.0)
        r.infer(1.0)
        feed(r, 1.2)
        r.infer(1.2)
        r.reset()
        feed(r, 5.0)
        r.infer(5.0)
        if name == "fresh":
            assert eng.noises == [None, None, None]  # the engine draws from the seed: replace's figures unchanged
        else:
            first, second, after_reset = eng.noises
            assert np.array_equal(second[:6], first[2:])  # 0.2 s later: two slots on
            assert not np.array_equal(after_reset[:6], second[2:])  # a reset starts afresh (the seed's noise)


def test_aligned_noise_needs_an_engine_that_takes_noise():
    class SeedOnlyEngine(FakeEngine):  # as backend remote: the server draws the noise from the seed
        takes_noise = False
    PolicyRunner(SeedOnlyEngine(), RunnerConfig(chunk_noise="fresh"))
    with pytest.raises(ConfigError, match="chunk_noise: aligned .* does not take; use chunk_noise fresh"):
        PolicyRunner(SeedOnlyEngine(), RunnerConfig(chunk_noise="aligned"))
    with pytest.raises(ConfigError, match="chunk_noise must be one of auto, fresh, aligned, got 'same'"):
        RunnerConfig(chunk_noise="same")


def test_runner_settings_round_trip_through_their_keywords():
    """What a node builds its RunnerConfig from (runner_fields) holds the declared settings, never the values
    resolved from them (transition, noise), so chunk_noise and chunk_transition survive the round trip."""
    cfg = RunnerConfig(chunk_transition="soft_inpaint_early", chunk_noise="aligned", inpaint_decay=0.6)
    again = RunnerConfig(**cfg.runner_fields())
    assert again.transition.name == "soft_inpaint_early" and again.chunk_noise == "aligned"
    assert again.inpaint_decay == 0.6 and "noise" not in cfg.runner_fields()
