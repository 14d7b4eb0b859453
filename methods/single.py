"""The default procedure: one training run of the configured architecture and balancer."""
from mtlbench.core.procedure import Procedure, ProcedureResult, RunContext
from mtlbench.core.registry import PROCEDURES


@PROCEDURES.register("single")
class Single(Procedure):
    """One training run of the configured architecture and balancer."""

    def __call__(self, ctx: RunContext) -> ProcedureResult:
        model = ctx.build_model(ctx.data.tasks)
        balancer = ctx.build_balancer(ctx.data.task_names)
        trainer = ctx.make_trainer()
        fit = trainer.fit(model, balancer, ctx.data, seed=ctx.seed, on_epoch=ctx.log_epoch)
        return ProcedureResult(fit=fit, model=model)
