"""Stage 2: the learned schedule, its gradients under checkpointing, and `budcache align`."""

import pytest
import torch

from budcache.align import AlignConfig, SigmaSchedule, align, student
from budcache.cli import main
from budcache.demo.problem import demo_batches, demo_denoisers, demo_inputs
from budcache.plan import CachePlan, PlanError
from budcache.sampling import linear_sigmas

K = 8
PLAN = CachePlan(num_steps=K, budget=3, mask=[1, 0, 0, 1, 0, 0, 1, 0], rule="extrapolate", sigmas=linear_sigmas(K))


def test_schedule_starts_at_the_plan_and_stays_strictly_decreasing():
    sigmas = [1.0, 0.9, 0.7, 0.4, 0.2, 0.0]
    schedule = SigmaSchedule(sigmas)
    assert torch.allclose(schedule(), torch.tensor(sigmas, dtype=torch.float64), atol=1e-12)
    with torch.no_grad():
        schedule.logits.copy_(torch.randn(5) * 5)
    s = schedule()
    assert s[0] == 1.0 and s[-1] == 0.0 and bool((s[:-1] > s[1:]).all())
    with pytest.raises(PlanError, match="strictly decreasing"):
        SigmaSchedule([1.0, 0.5, 0.5, 0.0])


def test_checkpointing_gives_the_same_gradient(demo_model):
    noise, labels = demo_inputs(3, 0)
    grads = []
    with demo_denoisers(demo_model, "residual") as make:
        for checkpointing in (True, False):
            schedule = SigmaSchedule(PLAN.sigmas)
            x = student(make(labels), noise, schedule(), PLAN.mask, PLAN.step_rules, checkpointing)
            x.pow(2).mean().backward()
            grads.append(schedule.logits.grad.clone())
    assert grads[0].abs().sum() > 0 and torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-9)


def test_checkpointing_keeps_fewer_activations(demo_model):
    noise, labels = demo_inputs(4, 0)
    plan = CachePlan(num_steps=16, budget=6, mask=[1, 0, 1, 0, 0, 1, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0],
                     sigmas=linear_sigmas(16))
    saved = []
    with demo_denoisers(demo_model, "residual") as make:
        for checkpointing in (True, False):
            total = []
            with torch.autograd.graph.saved_tensors_hooks(lambda t: total.append(t.nbytes) or t, lambda t: t):
                student(make(labels), noise, SigmaSchedule(plan.sigmas)(), plan.mask, plan.step_rules, checkpointing)
            saved.append(sum(total))
    assert saved[0] < saved[1] / 3


def test_align_never_returns_a_worse_schedule(demo_model):
    with demo_denoisers(demo_model, "residual") as make:
        train = demo_batches(make, *demo_inputs(6, 0))
        held_out = demo_batches(make, *demo_inputs(6, 99))
        aligned, result = align(PLAN, train, held_out, AlignConfig(epochs=6, lr=0.2), progress=False)
        assert min(result.validation_loss) == result.validation_loss[result.best_epoch]
        assert result.validation_loss[result.best_epoch] <= result.validation_loss[0]
        assert aligned.mask == PLAN.mask and aligned.sigmas[0] == 1.0 and aligned.sigmas[-1] == 0.0
        if not result.improved:
            assert aligned.sigmas == PLAN.sigmas
        unchanged, result = align(PLAN, train, held_out, AlignConfig(epochs=0), progress=False)
        assert unchanged.sigmas == PLAN.sigmas and not result.improved
    with pytest.raises(PlanError, match="no sigmas"):
        align(CachePlan(num_steps=K, budget=3, mask=PLAN.mask), train, progress=False)


def test_cli_align(tmp_path, capsys, demo_model):
    from budcache.plan import model_identity

    plan = CachePlan(num_steps=K, budget=3, mask=PLAN.mask, sigmas=linear_sigmas(K),
                     model=model_identity(demo_model.transformer))
    main(["--threads", "1", "align", str(plan.save(tmp_path / "p.json")), "--out", str(tmp_path / "a.json"),
          "--calib", "4", "--validation", "4", "--epochs", "3", "--no-progress"])
    aligned = CachePlan.load(tmp_path / "a.json")
    assert aligned.mask == plan.mask and (tmp_path / "a.png").exists()
    assert "validation MSE" in capsys.readouterr().out


def test_several_batches_give_the_gradient_of_one(demo_model):
    """Calibration split into batches (a pipeline source has one per prompt) trains like one batch."""
    noise, labels = demo_inputs(6, 0)
    losses = []
    with demo_denoisers(demo_model, "residual") as make:
        for size in (6, 2):
            torch.manual_seed(0)
            _, result = align(PLAN, demo_batches(make, noise, labels, batch_size=size), config=AlignConfig(epochs=3),
                              progress=False)
            losses.append(result.train_loss)
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_align_refuses_a_multistep_scheduler_in_one_line(tmp_path):
    plan = CachePlan(num_steps=6, budget=3, mask=[1, 0, 1, 0, 1, 0], sigmas=linear_sigmas(6))
    with pytest.raises(SystemExit, match="--scheduler unipc: stage 2 learns sigmas through the Euler step"):
        main(["align", str(plan.save(tmp_path / "p.json")), "--scheduler", "unipc", "--calib", "2",
              "--validation", "2", "--epochs", "1", "--out", str(tmp_path / "a.json"), "--no-progress"])
