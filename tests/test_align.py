"""Stage 2: the learned schedule, its gradients under checkpointing, and `budcache align`."""

import pytest
import torch

from budcache.align import AlignConfig, ModelTimes, SigmaSchedule, align, student
from budcache.cli import main
from budcache.demo.problem import demo_batches, demo_denoisers, demo_inputs
from budcache.plan import CachePlan, PlanError
from budcache.sampling import linear_sigmas, sample
from budcache.sampling.solver import Euler, Retimed

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
            solver = Euler(schedule().to(noise.dtype))
            x = student(make(labels), noise, solver, PLAN.mask, PLAN.step_rules, checkpointing)
            x.pow(2).mean().backward()
            grads.append(schedule.logits.grad.clone())
    assert grads[0].abs().sum() > 0 and torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-9)


def test_checkpointing_keeps_fewer_activations(demo_model):
    noise, labels = demo_inputs(4, 0)
    plan = CachePlan(
        num_steps=16, budget=6, mask=[1, 0, 1, 0, 0, 1, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0], sigmas=linear_sigmas(16)
    )
    saved = []
    with demo_denoisers(demo_model, "residual") as make:
        for checkpointing in (True, False):
            total = []
            with torch.autograd.graph.saved_tensors_hooks(lambda t: total.append(t.nbytes) or t, lambda t: t):
                solver = Euler(SigmaSchedule(plan.sigmas)().to(noise.dtype))
                student(make(labels), noise, solver, plan.mask, plan.step_rules, checkpointing)
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

    plan = CachePlan(
        num_steps=K, budget=3, mask=PLAN.mask, sigmas=linear_sigmas(K), model=model_identity(demo_model.transformer)
    )
    main(
        [
            "--threads",
            "1",
            "align",
            str(plan.save(tmp_path / "p.json")),
            "--out",
            str(tmp_path / "a.json"),
            "--calib",
            "4",
            "--validation",
            "4",
            "--epochs",
            "3",
            "--no-progress",
        ]
    )
    aligned = CachePlan.load(tmp_path / "a.json")
    assert aligned.mask == plan.mask and (tmp_path / "a.png").exists() and (tmp_path / "a.checkpoint.pt").exists()
    assert "validation MSE" in capsys.readouterr().out
    main(
        [
            "--threads",
            "1",
            "align",
            str(tmp_path / "p.json"),
            "--out",
            str(tmp_path / "a.json"),
            "--calib",
            "4",
            "--validation",
            "4",
            "--epochs",
            "3",
            "--resume",
            "--no-progress",
        ]
    )  # a finished run: nothing left to do
    assert CachePlan.load(tmp_path / "a.json") == aligned
    main(
        [
            "--threads",
            "1",
            "align",
            str(tmp_path / "p.json"),
            "--out",
            str(tmp_path / "t.json"),
            "--calib",
            "4",
            "--validation",
            "4",
            "--epochs",
            "2",
            "--model-times",
            "--no-progress",
        ]
    )
    timed = CachePlan.load(tmp_path / "t.json")
    assert "decoupled model times" in capsys.readouterr().out
    assert timed.model_sigmas is None or len(timed.model_sigmas) == K


def test_several_batches_give_the_gradient_of_one(demo_model):
    """Calibration split into batches (a pipeline source has one per prompt) trains like one batch."""
    noise, labels = demo_inputs(6, 0)
    losses = []
    with demo_denoisers(demo_model, "residual") as make:
        for size in (6, 2):
            torch.manual_seed(0)
            _, result = align(
                PLAN, demo_batches(make, noise, labels, batch_size=size), config=AlignConfig(epochs=3), progress=False
            )
            losses.append(result.train_loss)
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


@pytest.mark.parametrize("scheduler", ["unipc", "dpm"])
def test_align_steps_through_the_multistep_schedulers(tmp_path, capsys, scheduler, demo_model):
    """Under UniPC and DPM-Solver++ the student steps their differentiable equals: the schedule learns, and
    the aligned plan run by the source's solver over its sigmas gives the loss alignment reported."""
    from budcache.demo.problem import demo_source
    from budcache.plan import model_identity

    mask = [1, 0, 1, 0, 0, 1, 0, 1]
    with demo_source(K, 4, validation=4, held_out=0, model=demo_model, scheduler=scheduler) as source:
        plan = CachePlan(
            num_steps=K, budget=4, mask=mask, sigmas=source.sigmas, model=model_identity(demo_model.transformer)
        )
        aligned, result = align(
            plan,
            source.batches("calib"),
            source.batches("validation"),
            AlignConfig(epochs=3, lr=0.05),
            progress=False,
            solver=source.solver,
        )
        assert result.improved and aligned.sigmas != plan.sigmas
        with torch.no_grad():
            teacher = [sample(b.denoiser, b.noise, source.solver, [1] * K) for b in source.batches("validation")]
            solver = source.solver_for(aligned.sigmas)
            assert solver.name == source.solver.name
            x = [sample(b.denoiser, b.noise, solver, mask, aligned.step_rules) for b in source.batches("validation")]
        loss = sum((a - t).pow(2).mean().item() * a.shape[0] for a, t in zip(x, teacher)) / 4
        assert loss == pytest.approx(result.validation_loss[result.best_epoch], rel=1e-4)
    main(
        [
            "align",
            str(plan.save(tmp_path / "p.json")),
            "--scheduler",
            scheduler,
            "--calib",
            "2",
            "--validation",
            "2",
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "a.json"),
            "--no-progress",
        ]
    )
    assert "validation MSE" in capsys.readouterr().out


def test_model_times_start_at_the_steps_own_sigmas_and_learn_where_the_model_is_told():
    sigmas = SigmaSchedule(PLAN.sigmas)()
    times = ModelTimes(K)
    assert torch.equal(times(sigmas), sigmas[:-1])  # zero offsets: exactly the steps' sigmas
    with torch.no_grad():
        times.offsets.copy_(torch.randn(K) * 3)
    told = times(sigmas)
    assert bool((told > 0).all()) and bool((told < 1 + 1e-4).all()) and not torch.allclose(told, sigmas[:-1])


def test_decoupled_model_times_are_kept_only_where_validation_improves(demo_model):
    """With ``model_times`` the second phase learns the model's noise levels; the plan carries them only
    when they beat the aligned sigmas on validation, and sampling the returned plan gives the reported loss."""
    noise, labels = demo_inputs(6, 99)
    with demo_denoisers(demo_model, "residual") as make:
        train = demo_batches(make, *demo_inputs(6, 0))
        held_out = demo_batches(make, noise, labels)
        config = AlignConfig(epochs=4, lr=0.2)
        plain, first = align(PLAN, train, held_out, config, progress=False)
        timed, result = align(PLAN, train, held_out, AlignConfig(epochs=4, lr=0.2, model_times=True), progress=False)
        assert result.validation_loss[:5] == pytest.approx(first.validation_loss, rel=1e-6)  # phase 1 is align's
        assert len(result.validation_loss) == 9
        best = result.validation_loss[result.best_epoch]
        assert best == min(result.validation_loss)
        assert (timed.model_sigmas is not None) == (result.best_epoch > 4)
        if timed.model_sigmas is None:
            assert timed.sigmas == plain.sigmas
        with torch.no_grad():
            teacher = sample(make(labels), noise, linear_sigmas(K), [1] * K)
            solver = (
                Euler(timed.sigmas) if timed.model_sigmas is None else Retimed(Euler(timed.sigmas), timed.model_sigmas)
            )
            x = sample(make(labels), noise, solver, timed.mask, timed.step_rules)
        assert (x - teacher).pow(2).mean().item() == pytest.approx(best, rel=1e-4)


@pytest.mark.parametrize("stop_at", [2, 6])  # 2: during the sigmas, 6: during the model times (4 epochs each)
def test_an_interrupted_alignment_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch, demo_model, stop_at):
    """The checkpoint written after every epoch lets ``resume`` continue where Ctrl-C stopped (in either
    phase); the result is exactly an uninterrupted run's. Another configuration's checkpoint is refused."""
    from budcache.align import checkpoint as align_checkpoint
    from budcache.align import fit as align_module
    from budcache.errors import CheckpointError

    config = AlignConfig(epochs=4, lr=0.05, model_times=True)
    with demo_denoisers(demo_model, "residual") as make:
        train = demo_batches(make, *demo_inputs(4, 0))
        held_out = demo_batches(make, *demo_inputs(4, 99))
        whole, expected = align(PLAN, train, held_out, config, progress=False, checkpoint=tmp_path / "whole.pt")
        train_epoch, calls = align_module._Fit.train, []

        def interrupted(self, tensors):
            calls.append(1)
            if len(calls) > stop_at:
                raise KeyboardInterrupt
            return train_epoch(self, tensors)

        monkeypatch.setattr(align_module._Fit, "train", interrupted)
        _, cut = align(PLAN, train, held_out, config, progress=False, checkpoint=tmp_path / "cut.pt")
        assert cut.interrupted and len(cut.train_loss) == stop_at
        phase = "sigmas" if stop_at < 4 else "model times"
        assert align_checkpoint.unfinished(tmp_path / "cut.pt") == f"epoch {stop_at % 4} of the {phase}"
        assert align_checkpoint.unfinished(tmp_path / "whole.pt") is None
        with pytest.raises(SystemExit, match="holds an unfinished alignment"):  # a fresh start would overwrite it
            main(
                [
                    "align",
                    str(PLAN.save(tmp_path / "p.json")),
                    "--out",
                    str(tmp_path / "a.json"),
                    "--checkpoint",
                    str(tmp_path / "cut.pt"),
                ]
            )
        monkeypatch.setattr(align_module._Fit, "train", train_epoch)
        resumed, result = align(
            PLAN, train, held_out, config, progress=False, checkpoint=tmp_path / "cut.pt", resume=True
        )
        assert (resumed.sigmas, resumed.model_sigmas) == (whole.sigmas, whole.model_sigmas)
        assert (result.validation_loss, result.train_loss, result.best_epoch) == (
            expected.validation_loss,
            expected.train_loss,
            expected.best_epoch,
        )
        with pytest.raises(CheckpointError, match="config differs"):
            align(
                PLAN,
                train,
                held_out,
                AlignConfig(epochs=4, lr=0.01),
                progress=False,
                checkpoint=tmp_path / "cut.pt",
                resume=True,
            )
        with pytest.raises(CheckpointError, match="no such alignment checkpoint"):
            align(PLAN, train, held_out, config, progress=False, checkpoint=tmp_path / "none.pt", resume=True)
