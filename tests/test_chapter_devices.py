"""On a GPU runtime the chapters run their networks on the GPU: a static check of their code.

The book makes one device choice, `DEVICE = default_device()` (sdelib.device), in the setup cell
of each chapter. A network left on the CPU, or a sampler driven by a CPU generator, still runs
on a GPU runtime, only slowly, so nothing but reading the code finds it. This module reads it:
every notebook of _toc.yml is parsed (no cell is executed) and checked against four rules.

1. A chapter that builds or loads a network (`load_pretrained(`, `model_from_checkpoint(`,
   `ScoreNet(`, `MLPScoreNet(`) assigns `DEVICE = default_device()` before the first of them.
2. A model from `load_pretrained` or `model_from_checkpoint` is moved `.to(DEVICE)` in the cell
   that loads it.
3. A call that is given a network and a `torch.Generator` gets one made with `device=DEVICE`.
   A network is a name bound to one of the calls of rule 1, to a call given a network
   (`score_fn = CountingScore(model)`) or to a network's method (`model.to(DEVICE)`); a
   generator is a `torch.Generator(...)` expression or a name bound to one. A name means its
   latest binding before the call, in the enclosing function first; a function's parameter is
   neither (what it receives is checked where the function is called), and a name not bound
   yet (a function body that uses a later cell's model) is a network if any binding in the
   notebook makes it one.
   Samplers put their state on `generator.device`, so this is what moves a sampler's work.
4. A sampler of `sdelib.samplers` (one with `generator` and `device` parameters: without
   either it runs on the CPU) called on a network is given a generator that is not a CPU one,
   or `device=DEVICE`.

Cells without a network (toy data with exact scores) may keep their CPU generators: the rules
only look at calls that are given a network. Each rule is checked on a synthetic notebook that
breaks it (a negative control) and on one that keeps it.
"""
import ast
import inspect
import json
import re
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
FACTORIES = {"load_pretrained", "model_from_checkpoint", "ScoreNet", "MLPScoreNet"}
LOADERS = {"load_pretrained", "model_from_checkpoint"}


def sampler_names() -> set[str]:
    from sdelib import samplers
    return {name for name in samplers.__all__
            if callable(obj := getattr(samplers, name)) and not isinstance(obj, type)
            and {"generator", "device"} <= set(inspect.signature(obj).parameters)}


def toc_notebooks() -> list[Path]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    entries = toc.get("chapters", []) + [
        entry for part in toc.get("parts", []) for entry in part.get("chapters", [])]
    docs = [toc["root"]] + [entry["file"] for entry in entries]
    return [ROOT / f"{doc}.ipynb" for doc in docs if (ROOT / f"{doc}.ipynb").exists()]


# --- reading the code ---------------------------------------------------------------------------
def code_cells(notebook: dict) -> list[tuple[int, ast.Module]]:
    """(cell index, parsed source) of each code cell, IPython magics and shell lines blanked."""
    cells = []
    for index, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] != "code":
            continue
        source = cell["source"]
        source = "".join(source) if isinstance(source, list) else source
        source = re.sub(r"(?m)^(\s*)[%!].*$", r"\1pass", source)
        cells.append((index, ast.parse(source)))
    return cells


def callee(call: ast.Call) -> str | None:
    """The called name: `f` of f(...) and of a.b.f(...)."""
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def is_generator_call(node) -> bool:
    return isinstance(node, ast.Call) and callee(node) == "Generator"


def generator_call(expr):
    """The torch.Generator(...) call at the root of `torch.Generator(...).manual_seed(k)`."""
    while isinstance(expr, ast.Call):
        if is_generator_call(expr):
            return expr
        if not isinstance(expr.func, ast.Attribute):
            return None
        expr = expr.func.value
    return None


def is_device(node) -> bool:
    return isinstance(node, ast.Name) and node.id == "DEVICE"


def on_device(generator: ast.Call) -> bool:
    return (any(is_device(arg) for arg in generator.args[:1])
            or any(k.arg == "device" and is_device(k.value) for k in generator.keywords))


def factory_call(expr):
    """The network-making call at the root of e.g. `load_pretrained(...)[0].to(DEVICE)`."""
    while True:
        if isinstance(expr, ast.Call) and callee(expr) in FACTORIES:
            return expr
        if isinstance(expr, ast.Subscript):
            expr = expr.value
        elif isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute):
            expr = expr.func.value
        else:
            return None


def chain_root(expr):
    """The name at the root of `model.to(DEVICE).eval()` or `nets["DSM"]` (None if none)."""
    while isinstance(expr, ast.Subscript) or (isinstance(expr, ast.Call)
                                              and isinstance(expr.func, ast.Attribute)):
        expr = expr.value if isinstance(expr, ast.Subscript) else expr.func.value
    return expr.id if isinstance(expr, ast.Name) else None


def target_names(target) -> list[str]:
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, (ast.Tuple, ast.List)):
        return [name for element in target.elts for name in target_names(element)]
    return []


def assignments(cells):
    for index, module in cells:
        for node in ast.walk(module):
            if isinstance(node, ast.Assign):
                yield index, node, node.targets
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                yield index, node, [node.target]


def call_arguments(call: ast.Call) -> list:
    return list(call.args) + [k.value for k in call.keywords]


def referenced_names(nodes) -> set[str]:
    return {n.id for node in nodes for n in ast.walk(node) if isinstance(n, ast.Name)}


def network_names(cells) -> set[str]:
    """Names that some binding makes a network (the first name of `model, sde =
    load_pretrained(...)`), then, to a fixed point, names bound to a call that is given one
    (`score_fn = CountingScore(m)`) or to a network's method (`m.to(DEVICE)`): regardless of
    order, for names used before their binding."""
    nets = set()
    for _, node, targets in assignments(cells):
        if factory_call(node.value) is not None:
            for target in targets:
                names = target_names(target)
                nets.update(names[:1])
    while True:
        before = len(nets)
        for _, node, targets in assignments(cells):
            calls = [n for n in ast.walk(node.value) if isinstance(n, ast.Call)]
            if (any(referenced_names(call_arguments(call)) & nets for call in calls)
                    or chain_root(node.value) in nets):
                for target in targets:
                    nets.update(name for name in target_names(target) if name != "_")
        if len(nets) == before:
            return nets


class Finding(NamedTuple):
    rule: str
    cell: int
    line: int
    text: str

    def __str__(self):
        return f"cell {self.cell}, line {self.line}: {self.text}"


class Binding(NamedTuple):
    generator: str | None   # "device", "cpu", or None: not a known generator
    network: bool


class Report(NamedTuple):
    networks: set           # the names bound to a network somewhere
    findings: list          # Finding, one per broken rule and place
    generator_checks: int   # generator arguments of calls given a network, looked at
    sampler_checks: int     # sampler calls given a network, looked at


class _Walker(ast.NodeVisitor):
    """Walks the cells in order, binding names (scoped by function) to generators and networks,
    and checks each call that is given a network (rules 3 and 4)."""

    def __init__(self, unbound_networks, samplers):
        self.unbound_networks, self.samplers = unbound_networks, samplers
        self.scopes = [{}]      # name -> Binding
        self.networks, self.findings, self.generator_checks, self.sampler_checks = (
            set(), [], 0, 0)
        self.cell, self.source = 0, ""

    def lookup(self, name) -> Binding | None:
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        return None

    def kind(self, expr):
        generator = generator_call(expr)
        if generator is not None:
            return "device" if on_device(generator) else "cpu"
        if isinstance(expr, ast.Name) and (binding := self.lookup(expr.id)) is not None:
            return binding.generator
        return None

    def is_network(self, name) -> bool:
        binding = self.lookup(name)
        return binding.network if binding is not None else name in self.unbound_networks

    def given_network(self, call) -> bool:
        return any(self.is_network(name) for name in referenced_names(call_arguments(call)))

    def bind(self, target, value=None):
        names = target_names(target)
        made = value is not None and factory_call(value) is not None
        derived = value is not None and (
            any(self.given_network(n) for n in ast.walk(value) if isinstance(n, ast.Call))
            or (chain_root(value) is not None and self.is_network(chain_root(value))))
        kind = self.kind(value) if value is not None and isinstance(target, ast.Name) else None
        for position, name in enumerate(names):
            network = (made and position == 0) or (derived and not made and name != "_")
            self.scopes[-1][name] = Binding(kind, network)
            if network:
                self.networks.add(name)

    def visit_Assign(self, node):
        self.visit(node.value)
        for target in node.targets:
            self.bind(target, node.value)

    def visit_AnnAssign(self, node):
        if node.value is not None:
            self.visit(node.value)
            self.bind(node.target, node.value)

    def visit_For(self, node):
        self.visit(node.iter)
        self.bind(node.target)
        for statement in node.body + node.orelse:
            self.visit(statement)

    def _function(self, node, body):
        arguments = node.args
        for default in arguments.defaults + [d for d in arguments.kw_defaults if d is not None]:
            self.visit(default)
        parameters = arguments.posonlyargs + arguments.args + arguments.kwonlyargs
        parameters += [a for a in (arguments.vararg, arguments.kwarg) if a is not None]
        self.scopes.append({a.arg: Binding(None, False) for a in parameters})
        for statement in body:
            self.visit(statement)
        self.scopes.pop()

    def visit_FunctionDef(self, node):
        for decorator in node.decorator_list:
            self.visit(decorator)
        self.scopes[-1][node.name] = Binding(None, False)
        self._function(node, node.body)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node):
        self._function(node, [node.body])

    def finding(self, rule, node):
        text = ast.get_source_segment(self.source, node) or ast.dump(node)
        self.findings.append(Finding(rule, self.cell, node.lineno, " ".join(text.split())))

    def visit_Call(self, node):
        self.generic_visit(node)
        if not self.given_network(node):
            return
        for argument in call_arguments(node):
            kind = self.kind(argument)
            if kind is not None:
                self.generator_checks += 1
                if kind == "cpu":
                    self.finding("generators", node)
        if callee(node) in self.samplers:
            self.sampler_checks += 1
            keywords = {k.arg: k.value for k in node.keywords if k.arg is not None}
            generator = keywords.get("generator")
            given = generator is not None and not (isinstance(generator, ast.Constant)
                                                   and generator.value is None)
            if not ((given and self.kind(generator) != "cpu")
                    or is_device(keywords.get("device"))):
                self.finding("samplers", node)


def first_position(cells, predicate):
    positions = [(index, node.lineno) for index, module in cells for node in ast.walk(module)
                 if predicate(node)]
    return min(positions, default=None)


def is_device_choice(node) -> bool:
    return (isinstance(node, ast.Assign)
            and [target_names(t) for t in node.targets] == [["DEVICE"]]
            and isinstance(node.value, ast.Call) and callee(node.value) == "default_device")


def check_notebook(notebook: dict, samplers: set[str] | None = None) -> Report:
    """The four rules of the module docstring on one notebook (a dict, as json.load gives)."""
    samplers = sampler_names() if samplers is None else samplers
    cells = code_cells(notebook)
    sources = {index: "".join(notebook["cells"][index]["source"]) for index, _ in cells}
    findings = []
    # rule 1
    first_net = first_position(
        cells, lambda n: isinstance(n, ast.Call) and callee(n) in FACTORIES)
    if first_net is not None:
        device = first_position(cells, is_device_choice)
        if device is None or device >= first_net:
            findings.append(Finding("device_first", *first_net,
                                    "a network before DEVICE = default_device()"))
    # rule 2
    for index, node, targets in assignments(cells):
        root = factory_call(node.value)
        if root is None or callee(root) not in LOADERS or not targets:
            continue
        names = target_names(targets[0])[:1]
        if not names:
            continue
        chained = any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                      and n.func.attr == "to" and n.args[:1] and is_device(n.args[0])
                      for n in ast.walk(node.value))
        module = dict(cells)[index]
        moved = any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                    and n.func.attr == "to" and isinstance(n.func.value, ast.Name)
                    and n.func.value.id == names[0] and n.args[:1] and is_device(n.args[0])
                    and n.lineno >= node.lineno for n in ast.walk(module))
        loaded_there = any(keyword.arg == "map_location" and is_device(keyword.value)
                           for keyword in root.keywords)
        if not (chained or moved or loaded_there):
            findings.append(Finding("loaded_moved", index, node.lineno,
                                    f"{names[0]} is not moved .to(DEVICE) in its cell"))
    # rules 3 and 4
    walker = _Walker(network_names(cells), samplers)
    for index, module in cells:
        walker.cell, walker.source = index, sources[index]
        walker.visit(module)
    return Report(walker.networks, findings + walker.findings, walker.generator_checks,
                  walker.sampler_checks)


# --- the chapters -------------------------------------------------------------------------------
CHAPTERS = {path.stem: path for path in toc_notebooks()}


@pytest.fixture(scope="module")
def reports():
    samplers = sampler_names()
    return {name: check_notebook(json.loads(path.read_text(encoding="utf-8")), samplers)
            for name, path in CHAPTERS.items()}


def broken(report, rule):
    return "\n".join(str(f) for f in report.findings if f.rule == rule)


@pytest.mark.parametrize("chapter", list(CHAPTERS))
def test_device_is_chosen_before_the_first_network(reports, chapter):
    assert not broken(reports[chapter], "device_first"), broken(reports[chapter], "device_first")


@pytest.mark.parametrize("chapter", list(CHAPTERS))
def test_loaded_models_move_to_the_device_in_their_cell(reports, chapter):
    assert not broken(reports[chapter], "loaded_moved"), broken(reports[chapter], "loaded_moved")


@pytest.mark.parametrize("chapter", list(CHAPTERS))
def test_calls_given_a_network_draw_on_the_device(reports, chapter):
    assert not broken(reports[chapter], "generators"), broken(reports[chapter], "generators")


@pytest.mark.parametrize("chapter", list(CHAPTERS))
def test_samplers_given_a_network_are_told_the_device(reports, chapter):
    assert not broken(reports[chapter], "samplers"), broken(reports[chapter], "samplers")


def test_the_chapters_with_networks_are_the_expected_ones(reports):
    with_networks = {name for name, report in reports.items() if report.networks}
    assert with_networks == {"intro", "score_matching", "training", "sampling", "latents",
                             "flow_matching", "likelihood", "controllable", "which_sampler"}


def test_the_check_looks_at_generators_passed_with_networks(reports):
    """Not vacuous: in these chapters it finds calls given both a network and a generator."""
    for name in ("intro", "score_matching", "training", "sampling", "likelihood",
                 "which_sampler"):
        assert reports[name].generator_checks > 0, name


def test_the_check_looks_at_the_samplers_of_the_sampling_chapter(reports):
    # cells 6 (euler_maruyama), 21 and 23 (the sliders), 30 (the ODE's determinism)
    assert reports["sampling"].sampler_checks >= 4


# --- negative controls: synthetic notebooks -----------------------------------------------------
SETUP = ("import torch\n"
         "from sdelib import default_device\n"
         "from sdelib.pretrained import load_pretrained\n"
         "from sdelib.samplers import euler_maruyama\n"
         "DEVICE = default_device()\n")
LOAD = 'model, sde = load_pretrained("mnist-ve")\nmodel = model.to(DEVICE)\n'


def notebook(*sources) -> dict:
    return {"cells": [{"cell_type": "markdown", "source": "# A chapter"}]
            + [{"cell_type": "code", "source": source} for source in sources]}


def rules_broken(*sources) -> list[str]:
    return [f.rule for f in check_notebook(notebook(*sources)).findings]


def test_a_cpu_generator_driving_a_network_sampler_is_caught():
    sampler = ("euler_maruyama(model, sde, (4, 1, 28, 28), "
               "generator=torch.Generator().manual_seed(0))\n")
    assert rules_broken(SETUP, LOAD, sampler) == ["generators", "samplers"]


def test_a_device_generator_driving_a_network_sampler_passes():
    sampler = ("euler_maruyama(model, sde, (4, 1, 28, 28), "
               "generator=torch.Generator(device=DEVICE).manual_seed(0))\n")
    report = check_notebook(notebook(SETUP, LOAD, sampler))
    assert report.findings == [] and report.generator_checks == 1
    assert report.sampler_checks == 1


def test_a_cpu_generator_bound_to_a_name_in_an_earlier_cell_is_caught():
    cells = (SETUP, LOAD, "noise = torch.Generator().manual_seed(1)\n",
             "samples = euler_maruyama(model, sde, (4, 1, 28, 28), generator=noise)\n")
    assert rules_broken(*cells) == ["generators", "samplers"]


def test_a_network_wrapped_in_a_score_function_is_still_a_network():
    cells = (SETUP, LOAD, "score_fn = Counting(model)\n",
             "helper(score_fn, torch.Generator().manual_seed(2))\n")
    assert rules_broken(*cells) == ["generators"]


def test_a_generator_parameter_is_checked_where_the_function_is_called():
    function = ("def draw(score_fn, generator):\n"
                "    return euler_maruyama(score_fn, sde, (4, 2), generator=generator)\n"
                "generator = torch.Generator().manual_seed(3)\n")
    on_device = "draw(model, torch.Generator(device=DEVICE).manual_seed(3))\n"
    on_cpu = "draw(model, generator)\n"
    assert rules_broken(SETUP, LOAD, function, on_device) == []
    assert rules_broken(SETUP, LOAD, function, on_cpu) == ["generators"]


def test_a_name_rebound_to_a_toy_score_is_no_longer_a_network():
    cells = (SETUP, LOAD, "score = Counting(model)\n",
             "score = mixture.score_fn(sde)\n"
             "euler_maruyama(score, sde, (100, 2), generator=torch.Generator().manual_seed(5))\n")
    assert rules_broken(*cells) == []
    assert rules_broken(*cells[:3], cells[3].replace("mixture.score_fn(sde)", "Counting(model)")) \
        == ["generators", "samplers"]


def test_a_toy_sampler_with_an_exact_score_may_stay_on_the_cpu():
    toy = ("mixture = ring_mixture()\n"
           "euler_maruyama(mixture.score_fn(sde), sde, (100, 2), "
           "generator=torch.Generator().manual_seed(4))\n")
    assert rules_broken(SETUP, LOAD, toy) == []


def test_a_network_sampler_without_generator_or_device_is_caught():
    ode = "probability_flow_ode(model, sde, (4, 1, 28, 28), x_init=x)\n"
    told = "probability_flow_ode(model, sde, (4, 1, 28, 28), x_init=x, device=DEVICE)\n"
    samplers = {"probability_flow_ode"}
    assert [f.rule for f in check_notebook(notebook(SETUP, LOAD, ode), samplers).findings] \
        == ["samplers"]
    assert check_notebook(notebook(SETUP, LOAD, told), samplers).findings == []


def test_device_chosen_after_the_first_network_is_caught():
    late = SETUP.replace("DEVICE = default_device()\n", "")
    cells = (late, 'model, sde = load_pretrained("mnist-ve")\n'
             "DEVICE = default_device()\nmodel = model.to(DEVICE)\n")
    assert rules_broken(*cells) == ["device_first"]


def test_a_loaded_model_left_on_the_cpu_is_caught():
    cells = (SETUP, 'model, sde = load_pretrained("mnist-ve")\n', "model = model.to(DEVICE)\n")
    assert rules_broken(*cells) == ["loaded_moved"]


def test_a_model_loaded_onto_the_device_needs_no_move():
    cells = (SETUP, 'model, sde = load_pretrained("mnist-ve", map_location=DEVICE)\n')
    assert rules_broken(*cells) == []
    cells = (SETUP, 'model, sde = load_pretrained("mnist-ve", map_location="cpu")\n')
    assert rules_broken(*cells) == ["loaded_moved"]


def test_magics_do_not_stop_the_parse():
    cells = ("%pip install sdelib\n", SETUP, LOAD)
    assert rules_broken(*cells) == []
