"""A STAND-IN for TF-TRT's ``TrtGraphConverter``, because TensorRT cannot exist on this machine (no
NVIDIA GPU, no TensorRT). tftrt_convert.py loads it when EDGEFLEET_TRT_STANDIN names this file, and
every summary and result line then says ``tensorrt_standin``.

It does what TF-TRT's segmenter does first, and nothing more: it finds the connected groups of nodes
whose op types TensorRT can take (outside the denylisted output nodes) and counts those of at least
``minimum_segment_size`` nodes as the engines TensorRT would build. The graph it returns is the input,
unchanged: every op stays in TensorFlow, so a stand-in's latency is plain TensorFlow's.

Runs on the device beside the script: Python 3.6, no imports beyond the stdlib.
"""
import collections

NAME = "edgefleet trt_standin (no TensorRT here: segments counted, graph left in TensorFlow)"

# Op types TF-TRT converts (a subset of its op converters, enough for convolutional detectors).
SUPPORTED_OPS = frozenset([
    "Add", "AddV2", "AvgPool", "BiasAdd", "ConcatV2", "Const", "Conv2D", "DepthwiseConv2dNative",
    "FusedBatchNorm", "FusedBatchNormV3", "Identity", "MatMul", "MaxPool", "Mean", "Mul", "Pad", "Relu",
    "Relu6", "Reshape", "Rsqrt", "Sigmoid", "Softmax", "Squeeze", "StridedSlice", "Sub", "Tanh", "Transpose",
])


def _producer(name):
    return name.lstrip("^").split(":")[0]


class TrtGraphConverter(object):
    """Takes TF-TRT's TF1 constructor arguments (both spellings of the denylist) and ignores the rest."""

    def __init__(self, input_graph_def=None, nodes_denylist=None, nodes_blacklist=None,
                 minimum_segment_size=3, **settings):
        self.graph_def = input_graph_def
        self.denylist = set(nodes_denylist or nodes_blacklist or ())
        self.minimum_segment_size = minimum_segment_size
        self.settings = settings
        self.standin_engines = 0
        self.segment_sizes = []

    def convert(self):
        self.segment_sizes = sorted(_segments(self.graph_def, self.denylist), reverse=True)
        self.standin_engines = sum(1 for size in self.segment_sizes if size >= self.minimum_segment_size)
        return self.graph_def


def _segments(graph_def, denylist):
    """Sizes of the connected groups of convertible nodes (edges in either direction)."""
    nodes = dict((n.name, n) for n in graph_def.node
                 if n.op in SUPPORTED_OPS and n.name not in denylist)
    neighbours = collections.defaultdict(set)
    for node in nodes.values():
        for name in node.input:
            source = _producer(name)
            if source in nodes:
                neighbours[node.name].add(source)
                neighbours[source].add(node.name)
    seen = set()
    sizes = []
    for start in nodes:
        if start in seen:
            continue
        stack, size = [start], 0
        seen.add(start)
        while stack:
            size += 1
            for other in neighbours[stack.pop()] - seen:
                seen.add(other)
                stack.append(other)
        sizes.append(size)
    return sizes
