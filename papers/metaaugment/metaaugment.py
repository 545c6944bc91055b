"""MetaAugment's bilevel training step (Zhou et al., AAAI 2021, Algorithm 1, Eq. 2-4), batched.

One iteration t -> t + 1 on a mini-batch of n_tr augmented training images T_{j_i,k_i}(x_i) (one
forward of the whole batch) and a mini-batch of n_val validation images:

    (2)  w_hat(theta, alpha) = w - alpha * sum_i P~_i(theta) grad_w L_i(w)
    (3)  (theta, alpha) <- (theta, alpha) - beta * grad_(theta, alpha) L_val(w_hat(theta, alpha))
    (4)  w <- w - gamma * sum_i P~_i(theta_new) grad_w L_i(w)

with P~_i = P_i / sum_i' P_i' the batch-normalised policy outputs (the paper's implementation
paragraph; this replaces Eq. 2/4's (1/n_tr) P_i, the normalised weights already sum to 1) and
P_i = P(f(T(x_i); w), e(T); theta). As the paper says after Eq. 2, P_i is a function of theta
only: the features are taken at w and no derivative of P w.r.t. w is taken ("share FE": the task
network's penultimate features, detached; "own FE": a separate extractor whose parameters belong to
theta, Table 5). alpha is learned (Eq. 3).

Meta-gradient. Because grad_w L_i does not depend on theta, the chain rule through Eq. 2 is exact
without second derivatives of the task network:

    dL_val/dP~_i = -alpha * <grad_w L_i(w), g_val>,     dL_val/dalpha = -<sum_i P~_i grad_w L_i(w), g_val>,

g_val = grad_w L_val at w_hat. The n_tr directional derivatives <grad_w L_i(w), g_val> are one
forward-mode pass (a Jacobian-vector product of the per-sample loss vector in direction g_val,
`torch.func.jvp`, BatchNorm's batch statistics included), then the policy backward takes them as
the cotangent of P~. `meta_gradient="double_backward"` computes the same thing the generic way
(create_graph through the shared differentiable step `common.meta.differentiable_step`); tests
check both against central finite differences.

Per iteration the task network runs: the training forward (kept for two backwards: Eq. 2's
gradient at theta and Eq. 4's at theta_new), the validation forward + backward at w_hat, and the
JVP: the paper's "three forward and backward passes". The JVP needs no second primal forward: the
training forward runs as an fx graph that keeps every node's value (`TangentGraph`) and the JVP
pushes only the tangent through it (per conv two tangent convolutions; BatchNorm's tangent in six
full-tensor passes). The three backward passes are needed: Eq. 4's weights P~(theta_new) exist
only after Eq. 3, which needs g_val, which needs w_hat, i.e. Eq. 2's backward. Networks with an op
the tangent program has no rule for (e.g. dropout) use torch.func.jvp (which recomputes the primal).

Choices the paper leaves open (the package README repeats them):

* Eq. 2 is plain SGD (no momentum, no weight decay), as written; Eq. 4 uses the task optimiser
  (SGD with momentum, Nesterov and weight decay, its lr gamma on the run's schedule), the usual
  WRN recipe; Eq. 3 is the policy optimiser (`policy_optimizer`, its lr beta). alpha is learned as
  alpha = exp(log_alpha), log_alpha in the policy optimiser without weight decay: alpha stays
  positive (a negative step size would ascend) without a clamp at 0, where dL_val/dP~ = -alpha <.,.>
  would vanish and the policy would stop learning.
* The lookahead passes (validation forward at w_hat, the JVP) run in train mode with batch
  statistics, on copies of the BatchNorm buffers: only the real training forward moves the running
  statistics, once per iteration, as in a plain training step.
* The validation images are not augmented; n_val and the way they are drawn are the caller's.
* The sampler (Eq. 5) records the outputs of Eq. 4's policy, P_i(w, theta_new), the weights that
  actually train the task network.
"""
from __future__ import annotations

import operator
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.func import functional_call, jvp

from common.meta.differentiable_step import lookahead_step
from papers.metaaugment.policy import PolicyNetwork, normalise_weights

META_GRADIENTS = ("jvp", "double_backward")
FEATURE_SOURCES = ("share", "own")


def backbone_features(net: nn.Module, x: Tensor) -> Tensor:
    """Pooled penultimate features of a backbone: `net.features(x)` (common.models.wide_resnet),
    or, for a common.models.cifar_resnet.CifarResNet, its stem and blocks followed by average pooling
    (the input of its `fc`)."""
    if hasattr(net, "features"):
        return net.features(x)
    return net.blocks(F.relu(net.bn(net.conv(x)))).mean(dim=(2, 3))


class TaskNetwork(nn.Module):
    """f(x; w) on raw pixels (float 0..255, [N, C, H, W]): per-channel standardisation, the backbone
    in channels_last memory format (measured ~15% faster per meta step on CPU here);
    `forward(x)` -> logits, `forward(x, with_features=True)` -> (logits, features)."""

    def __init__(self, net: nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.net = net.to(memory_format=torch.channels_last)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.feature_dim = int(net.fc.in_features)

    def forward(self, x: Tensor, with_features: bool = False):
        feats = backbone_features(self.net, ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last))
        logits = self.net.fc(feats)
        return (logits, feats) if with_features else logits


class MetaLearner(nn.Module):
    """theta and alpha of Eq. 3: the policy network P, its own feature extractor for Table 5's "own
    FE" (None: "share FE"), and the learnable inner learning rate alpha = exp(log_alpha) (a 0-dim
    parameter; the log keeps alpha > 0 without a projection that could stop the policy's learning)."""

    def __init__(self, policy: PolicyNetwork, alpha_init: float, extractor: TaskNetwork | None = None):
        super().__init__()
        if not alpha_init > 0:
            raise ValueError(f"alpha_init must be > 0, got {alpha_init!r}")
        self.policy, self.extractor = policy, extractor
        self.log_alpha = nn.Parameter(torch.tensor(float(alpha_init)).log())

    @property
    def alpha(self) -> Tensor:
        return self.log_alpha.exp()

    @property
    def features(self) -> str:
        return "share" if self.extractor is None else "own"

    def outputs(self, task_features: Tensor, images: Tensor, embedding: Tensor | None) -> Tensor:
        """P_i [n]: the policy on the detached task features (share FE) or on its own extractor's
        features of the same augmented images (own FE)."""
        if self.extractor is None:
            feats = task_features.detach()
        else:
            feats = self.extractor(images, with_features=True)[1]
        return self.policy(feats, embedding)

    def theta(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if name != "log_alpha"]


@dataclass
class MetaStepStats:
    """One iteration's numbers (floats / detached tensors)."""

    train_loss: float         # sum_i P~_i(theta_new) L_i(w): the weighted loss Eq. 4 descends
    val_loss: float           # L_val(w_hat) on the validation batch (Eq. 3's objective)
    alpha: float              # alpha after Eq. 3
    outputs: Tensor           # P_i(w, theta_new) [n], raw sigmoid outputs (recorded by the sampler)
    weights: Tensor           # P~_i(theta_new) [n]


def _per_sample_loss(model: nn.Module, params: dict, buffers: dict, x: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(functional_call(model, (params, buffers), (x,)), y, reduction="none")


def _buffer_copies(model: nn.Module) -> dict[str, Tensor]:
    return {n: b.clone() for n, b in model.named_buffers()}


def meta_gradients(model: TaskNetwork, learner: MetaLearner, x: Tensor, y: Tensor, embedding: Tensor | None,
                   x_val: Tensor, y_val: Tensor, mode: str = "jvp", tangent_graph: bool = True
                   ) -> tuple[dict[str, Tensor], Tensor]:
    """grad_(theta, alpha) L_val(w_hat(theta, alpha)) (Eq. 2-3) by name of `learner`'s parameters,
    and L_val; nothing is updated, and the training forward runs on buffer copies (a pure function of
    the current state, for tests and benchmarks). The training step uses `MetaAugmentUpdate`.
    `tangent_graph=False` takes torch.func.jvp for the directional derivatives (the reference)."""
    train = _TrainPass(model, learner, x, y, embedding, _buffer_copies(model), tangent_graph)
    grads, val_loss = train.meta_gradients(x_val, y_val, mode)
    return grads, val_loss


# ------------------------------------------------------------------------------ the tangent program
# The JVP <grad_w L_i(w), g_val> of every training sample is a forward-mode pass at w, the point of
# the training forward that already ran. torch.func.jvp recomputes that primal forward and spends
# ~13 full-tensor passes per BatchNorm on its tangent; `TangentGraph` runs the training forward as an
# fx graph, keeps each node's primal value (and BatchNorm's batch mean / inverse std), and later
# propagates only the tangent through the same graph with the stored primals: the same derivative
# (tests compare it with torch.func.jvp and with finite differences), no second primal forward.
_LINEAR_FUNCTIONS = {F.pad, operator.getitem, torch.flatten, F.adaptive_avg_pool2d, F.avg_pool2d, operator.neg}
_LINEAR_METHODS = {"contiguous", "mean", "view", "reshape", "flatten", "sum", "__getitem__"}
_CONSTANT_FUNCTIONS = {operator.eq, torch._assert}         # fx's concrete_args guard: no tensors
_MODULES = (nn.Conv2d, nn.BatchNorm2d, nn.Linear, nn.ReLU)
_GRAPHS: weakref.WeakKeyDictionary[nn.Module, TangentGraph | None] = weakref.WeakKeyDictionary()


class UnsupportedGraph(Exception):
    """The task network has an op the tangent program has no rule for (then torch.func.jvp is used)."""


class TangentGraph:
    """TaskNetwork.forward(x, with_features=True) as an fx graph: `forward` runs it on a parameter
    and buffer dict (the same ops as the module: conv2d, batch_norm with the module's running-stat
    update, relu, add, pad, slicing, mean, linear) and returns the primals; `logits_tangent` pushes
    parameter tangents through the stored primals. Unsupported graphs raise UnsupportedGraph."""

    def __init__(self, model: nn.Module):
        try:
            self.gm = fx.symbolic_trace(model, concrete_args={"with_features": True})
        except Exception as exc:
            raise UnsupportedGraph(f"fx trace failed: {exc}") from exc
        self.modules = dict(model.named_modules())
        self.nodes = list(self.gm.graph.nodes)
        for node in self.nodes:
            ok = {"placeholder": True, "get_attr": True, "output": True,
                  "call_function": node.target in _LINEAR_FUNCTIONS | _CONSTANT_FUNCTIONS
                  | {operator.add, operator.sub, operator.mul, operator.truediv, F.relu, torch.relu},
                  "call_method": node.target in _LINEAR_METHODS or node.target == "relu",
                  "call_module": isinstance(self.modules.get(node.target), _MODULES)}.get(node.op, False)
            if not ok:
                raise UnsupportedGraph(f"no tangent rule for {node.op} {node.target}")
            module = self.modules.get(node.target) if node.op == "call_module" else None
            if isinstance(module, nn.Conv2d) and module.padding_mode != "zeros":
                raise UnsupportedGraph("conv padding_mode other than zeros")

    @staticmethod
    def of(model: nn.Module) -> TangentGraph | None:
        """The model's graph, traced once (None if unsupported)."""
        if model not in _GRAPHS:
            try:
                _GRAPHS[model] = TangentGraph(model)
            except UnsupportedGraph:
                _GRAPHS[model] = None
        return _GRAPHS[model]

    def forward(self, params: dict, buffers: dict, x: Tensor) -> tuple[Tensor, Tensor, dict]:
        """(logits, features, primals): the training forward (autograd as usual), every node's value."""
        env: dict = {"params": params}
        first = True
        for node in self.nodes:
            load = lambda a: fx.node.map_arg(a, env.__getitem__)
            if node.op == "placeholder":
                value, first = (x if first else True), False
            elif node.op == "get_attr":
                value = buffers[node.target] if node.target in buffers else params[node.target]
            elif node.op == "call_function":
                value = node.target(*load(node.args), **load(node.kwargs))
            elif node.op == "call_method":
                obj, *rest = load(node.args)
                value = getattr(obj, node.target)(*rest, **load(node.kwargs))
            elif node.op == "call_module":
                value = self._module(node, params, buffers, load(node.args)[0], env)
            else:
                logits, features = load(node.args[0])
                return logits, features, env
            env[node] = value
        raise UnsupportedGraph("graph without output")

    def _module(self, node, params, buffers, inp: Tensor, env: dict):
        m, name = self.modules[node.target], node.target
        get = lambda key: params.get(f"{name}.{key}")
        if isinstance(m, nn.Conv2d):
            return F.conv2d(inp, get("weight"), get("bias"), m.stride, m.padding, m.dilation, m.groups)
        if isinstance(m, nn.Linear):
            return F.linear(inp, get("weight"), get("bias"))
        if isinstance(m, nn.ReLU):
            return F.relu(inp)
        # BatchNorm2d, as nn.modules.batchnorm._BatchNorm.forward, through native_batch_norm to keep
        # the batch mean and inverse std for the tangent
        mean, var = buffers.get(f"{name}.running_mean"), buffers.get(f"{name}.running_var")
        factor = 0.0 if m.momentum is None else m.momentum
        if m.training and m.track_running_stats and f"{name}.num_batches_tracked" in buffers:
            tracked = buffers[f"{name}.num_batches_tracked"]
            tracked.add_(1)
            factor = 1.0 / float(tracked) if m.momentum is None else m.momentum
        batch_stats = m.training or (mean is None and var is None)
        use_running = not m.training or m.track_running_stats
        out, save_mean, save_invstd = torch.native_batch_norm(
            inp, get("weight"), get("bias"), mean if use_running else None, var if use_running else None,
            batch_stats, factor, m.eps)
        if batch_stats:
            env[(node, "stats")] = (save_mean.detach(), save_invstd.detach(), True)
        else:
            env[(node, "stats")] = (mean.detach(), (var.detach() + m.eps).rsqrt(), False)
        return out

    @torch.no_grad()
    def logits_tangent(self, env: dict, tangents: dict) -> Tensor:
        """d logits along the parameter tangents (a dict by parameter name; inputs have none)."""
        tan: dict = {}
        prim = lambda a: env[a] if isinstance(a, fx.Node) else a
        tg = lambda a: tan.get(a) if isinstance(a, fx.Node) else None
        for node in self.nodes:
            args = node.args
            if node.op == "placeholder":
                t = None
            elif node.op == "get_attr":
                t = tangents.get(node.target)
            elif node.op == "output":
                return tg(args[0][0])
            elif node.op == "call_module":
                t = self._module_tangent(node, env, tangents, args[0], tg(args[0]))
            elif node.target in _CONSTANT_FUNCTIONS:
                t = None
            elif node.target in (F.relu, torch.relu) or (node.op == "call_method" and node.target == "relu"):
                t = None if tg(args[0]) is None else torch.ops.aten.threshold_backward(tg(args[0]), env[node], 0.0)
            elif node.target in (operator.add, operator.sub):
                ta, tb = tg(args[0]), tg(args[1])
                t = ta if tb is None else (tb if node.target is operator.add else -tb) if ta is None \
                    else node.target(ta, tb)
            elif node.target is operator.mul:
                ta, tb = tg(args[0]), tg(args[1])
                parts = ([ta * prim(args[1])] if ta is not None else []) + \
                        ([prim(args[0]) * tb] if tb is not None else [])
                t = None if not parts else parts[0] if len(parts) == 1 else parts[0] + parts[1]
            elif node.target is operator.truediv:
                ta, tb = tg(args[0]), tg(args[1])
                t = None if ta is None and tb is None else \
                    ((ta if ta is not None else 0) - (env[node] * tb if tb is not None else 0)) / prim(args[1])
            else:                                                     # linear in its first argument
                t0 = tg(args[0])
                if t0 is None:
                    t = None
                elif node.op == "call_method":
                    t = getattr(t0, node.target)(*[prim(a) for a in args[1:]],
                                                 **{k: prim(v) for k, v in node.kwargs.items()})
                else:
                    t = node.target(t0, *[prim(a) for a in args[1:]], **{k: prim(v) for k, v in node.kwargs.items()})
            tan[node] = t
        raise UnsupportedGraph("graph without output")

    def _module_tangent(self, node, env, tangents, inp_node, t_in):
        m, name = self.modules[node.target], node.target
        inp = env[inp_node] if isinstance(inp_node, fx.Node) else inp_node
        tw, tb = tangents.get(f"{name}.weight"), tangents.get(f"{name}.bias")
        if isinstance(m, nn.ReLU):
            return None if t_in is None else torch.ops.aten.threshold_backward(t_in, env[node], 0.0)
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            weight = env["params"][f"{name}.weight"].detach()
            parts = []
            if t_in is not None:
                parts.append(F.conv2d(t_in, weight, None, m.stride, m.padding, m.dilation, m.groups)
                             if isinstance(m, nn.Conv2d) else F.linear(t_in, weight))
            if tw is not None:
                parts.append(F.conv2d(inp.detach(), tw, tb, m.stride, m.padding, m.dilation, m.groups)
                             if isinstance(m, nn.Conv2d) else F.linear(inp.detach(), tw, tb))
            elif tb is not None:
                parts.append(tb.view(1, -1, *([1] * (inp.ndim - 2))).expand_as(env[node]))
            return None if not parts else parts[0] if len(parts) == 1 else parts[0].add_(parts[1])
        # BatchNorm2d: y = g * xhat + b, xhat = (x - mu) * invstd with batch statistics:
        # t_y = g invstd t_x + (t_g - g invstd mean(xhat t_x)) xhat + (t_b - g invstd mean(t_x))
        mean, invstd, batch_stats = env[(node, "stats")]
        weight = env["params"].get(f"{name}.weight")
        gamma = torch.ones_like(invstd) if weight is None else weight.detach()
        shape = (1, -1, 1, 1)
        if t_in is None and tw is None and tb is None:
            return None
        scale = gamma * invstd
        # centred input xc = x - mu (xhat = xc * invstd, never materialised): 6 full-tensor passes
        centred = inp.detach() - mean.view(shape)
        coef_x = tw if tw is not None else torch.zeros_like(scale)
        const = tb if tb is not None else torch.zeros_like(scale)
        if t_in is not None and batch_stats:
            count = t_in.numel() // t_in.shape[1]
            coef_x = coef_x - scale * invstd * (centred * t_in).sum([0, 2, 3]) / count
            const = const - scale * t_in.sum([0, 2, 3]) / count
        out = torch.addcmul(const.view(shape), centred, (coef_x * invstd).view(shape))
        return out if t_in is None else out.addcmul_(t_in, scale.view(shape))


def _directional_losses(graph: TangentGraph, env: dict, logits: Tensor, y: Tensor, tangents: dict) -> Tensor:
    """<grad_w L_i(w), v> for the per-sample cross-entropy: t_logits . (softmax - onehot) per row."""
    t_logits = graph.logits_tangent(env, tangents)
    with torch.no_grad():
        probs = torch.softmax(logits.detach(), dim=1)
        return (probs * t_logits).sum(1) - t_logits.gather(1, y.view(-1, 1)).squeeze(1)


class _TrainPass:
    """The training forward of one iteration at w (kept for the backwards of Eq. 2 and Eq. 4)."""

    def __init__(self, model: TaskNetwork, learner: MetaLearner, x: Tensor, y: Tensor, embedding: Tensor | None,
                 buffers: dict[str, Tensor] | None = None, tangent_graph: bool = True):
        self.model, self.learner, self.x, self.y, self.embedding = model, learner, x, y, embedding
        self.params = {n: p for n, p in model.named_parameters()}
        self.buffers = {n: b for n, b in model.named_buffers()} if buffers is None else buffers
        self.graph = TangentGraph.of(model) if tangent_graph else None
        if self.graph is not None:
            self.logits, self.features, self.primals = self.graph.forward(self.params, self.buffers, x)
        else:
            self.logits, self.features = functional_call(model, (self.params, self.buffers), (x,),
                                                         {"with_features": True})
        self.losses = F.cross_entropy(self.logits, y, reduction="none")      # L_i(w) [n]

    def directional(self, tangent: dict[str, Tensor]) -> Tensor:
        """<grad_w L_i(w), tangent> [n]: the stored primals' tangent program, else torch.func.jvp
        (which runs the primal forward again)."""
        if self.graph is not None:
            return _directional_losses(self.graph, self.primals, self.logits, self.y, tangent)
        primal = {n: p.detach() for n, p in self.params.items()}
        _, out = jvp(lambda p: _per_sample_loss(self.model, p, _buffer_copies(self.model), self.x, self.y),
                     (primal,), (tangent,))
        return out.detach()

    def policy_weights(self) -> tuple[Tensor, Tensor]:
        outputs = self.learner.outputs(self.features, self.x, self.embedding)
        return outputs, normalise_weights(outputs)

    def meta_gradients(self, x_val: Tensor, y_val: Tensor, mode: str) -> tuple[dict[str, Tensor], Tensor]:
        if mode not in META_GRADIENTS:
            raise ValueError(f"meta_gradient: expected one of {list(META_GRADIENTS)}, got {mode!r}")
        names = [n for n, _ in self.learner.named_parameters()]
        leaves = [p for _, p in self.learner.named_parameters()]
        alpha = self.learner.alpha
        _, weights = self.policy_weights()
        lookahead_buffers = _buffer_copies(self.model)
        if mode == "double_backward":
            grads = torch.autograd.grad((weights * self.losses).sum(), list(self.params.values()),
                                        create_graph=True, retain_graph=True)
            w_hat = lookahead_step(self.model, _plain_sgd(self.model), self.params,
                                   dict(zip(self.params, grads)), lr=alpha)          # Eq. 2
            val_loss = _per_sample_loss(self.model, w_hat, lookahead_buffers, x_val, y_val).mean()
            meta = torch.autograd.grad(val_loss, leaves, allow_unused=True)
            return {n: torch.zeros_like(p) if g is None else g for n, p, g in zip(names, leaves, meta)}, \
                val_loss.detach()
        # jvp: Eq. 2 with the gradient detached; its dependence on theta and alpha applied analytically
        grads = torch.autograd.grad((weights.detach() * self.losses).sum(), list(self.params.values()),
                                    retain_graph=True)
        w_hat = {n: (p.detach() - alpha.detach() * g).requires_grad_(True)
                 for (n, p), g in zip(self.params.items(), grads)}
        val_loss = _per_sample_loss(self.model, w_hat, lookahead_buffers, x_val, y_val).mean()
        g_val = torch.autograd.grad(val_loss, list(w_hat.values()))
        directional = self.directional(dict(zip(self.params, g_val)))        # <grad L_i(w), g_val> [n]
        theta = [p for n, p in zip(names, leaves) if n != "log_alpha"]
        meta_theta = torch.autograd.grad(weights, theta, grad_outputs=-alpha.detach() * directional,
                                         allow_unused=True)
        out = {n: torch.zeros_like(p) if g is None else g
               for n, p, g in zip([n for n in names if n != "log_alpha"], theta, meta_theta)}
        out["log_alpha"] = -(weights.detach() * directional).sum() * alpha.detach()     # dL/dalpha * dalpha/dlog
        return out, val_loss.detach()


def _plain_sgd(model: nn.Module) -> torch.optim.SGD:
    """A momentum-free, decay-free torch SGD over the model's parameters: the inner step of Eq. 2 for
    `lookahead_step`, which reads the update rule from an optimizer (its lr is overridden by alpha)."""
    return torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.0, weight_decay=0.0)


class MetaAugmentUpdate:
    """Eq. 2-4 on one batch: `__call__` updates the learner (policy optimiser, Eq. 3) and the task
    network (task optimiser, Eq. 4) in place and returns the iteration's `MetaStepStats`."""

    def __init__(self, model: TaskNetwork, learner: MetaLearner, task_optimizer: torch.optim.Optimizer,
                 policy_optimizer: torch.optim.Optimizer, meta_gradient: str = "jvp", tangent_graph: bool = True):
        if meta_gradient not in META_GRADIENTS:
            raise ValueError(f"meta_gradient: expected one of {list(META_GRADIENTS)}, got {meta_gradient!r}")
        self.model, self.learner, self.tangent_graph = model, learner, tangent_graph
        self.task_optimizer, self.policy_optimizer, self.mode = task_optimizer, policy_optimizer, meta_gradient

    def __call__(self, x: Tensor, y: Tensor, embedding: Tensor | None, x_val: Tensor, y_val: Tensor) -> MetaStepStats:
        self.model.train()
        self.learner.train()
        train = _TrainPass(self.model, self.learner, x, y, embedding,    # the one forward that moves BN stats
                           tangent_graph=self.tangent_graph)
        grads, val_loss = train.meta_gradients(x_val, y_val, self.mode)  # Eq. 2-3
        self.policy_optimizer.zero_grad(set_to_none=True)
        for name, p in self.learner.named_parameters():
            p.grad = grads[name]
        self.policy_optimizer.step()                                     # Eq. 3
        with torch.no_grad():
            outputs, weights = train.policy_weights()                    # P_i(w, theta_new)
        loss = (weights * train.losses).sum()
        self.task_optimizer.zero_grad(set_to_none=True)
        loss.backward()                                                  # Eq. 4 (the forward's graph)
        self.task_optimizer.step()
        return MetaStepStats(float(loss.detach()), float(val_loss), float(self.learner.alpha.detach()),
                             outputs.detach(), weights.detach())


def policy_optimizer(learner: MetaLearner, lr: float, momentum: float, nesterov: bool,
                     weight_decay: float) -> torch.optim.SGD:
    """Eq. 3's optimiser: SGD over theta (with weight decay) and log alpha (without)."""
    return torch.optim.SGD([{"params": learner.theta(), "weight_decay": weight_decay},
                            {"params": [learner.log_alpha], "weight_decay": 0.0}],
                           lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)
