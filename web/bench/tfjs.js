// The page's tiny and small presets written in TensorFlow.js (channels-last, as TF.js
// lays out images), trained with SGD + momentum on the WebGPU backend: the peer that
// bench/compare.mjs times beside densenet-wgpu's page in the same browser.
/* global tf */
const PRESETS = {
  // densenet-wgpu's DenseNetConfig::tiny() and ::small() on 24x24 gray images, 10 classes:
  // a 3x3 stem conv, dense layers BN-ReLU-conv3x3 (growth k) concatenated, transitions
  // BN-ReLU-conv1x1 (half the channels) then 2x2 average pooling, BN-ReLU-global pool-linear.
  tiny: { stem: 8, blocks: [3, 3], growth: 8 },
  small: { stem: 16, blocks: [2, 3, 3], growth: 12 },
};

function bnRelu(x) {
  const y = tf.layers.batchNormalization({ momentum: 0.9, epsilon: 1e-5 }).apply(x);
  return tf.layers.activation({ activation: 'relu' }).apply(y);
}

function densenet({ stem, blocks, growth }, size = 24, classes = 10) {
  const input = tf.input({ shape: [size, size, 1] });
  const conv = (c, k) => tf.layers.conv2d({ filters: c, kernelSize: k, padding: 'same', useBias: false,
    kernelInitializer: 'heNormal' });
  let x = conv(stem, 3).apply(input);
  let channels = stem;
  blocks.forEach((layers, b) => {
    for (let l = 0; l < layers; l++) {
      const y = conv(growth, 3).apply(bnRelu(x));
      x = tf.layers.concatenate().apply([x, y]);
      channels += growth;
    }
    if (b < blocks.length - 1) {
      channels = Math.floor(channels / 2);
      x = tf.layers.averagePooling2d({ poolSize: 2, strides: 2 }).apply(conv(channels, 1).apply(bnRelu(x)));
    }
  });
  x = tf.layers.globalAveragePooling2d({}).apply(bnRelu(x));
  const logits = tf.layers.dense({ units: classes }).apply(x);
  const model = tf.model({ inputs: input, outputs: logits });
  model.compile({
    optimizer: tf.train.momentum(0.1, 0.9, true),
    loss: (y, p) => tf.losses.softmaxCrossEntropy(y, p),
  });
  return model;
}

// Times `steps` training steps of `preset` at `batch` after two warm-up steps; each step
// waits for its loss, as the page's slices wait for their metrics.
window.timeTfjs = async (preset, batch, steps) => {
  await tf.setBackend('webgpu');
  await tf.ready();
  const model = densenet(PRESETS[preset]);
  const x = tf.randomUniform([batch, 24, 24, 1]);
  const y = tf.oneHot(tf.randomUniform([batch], 0, 10, 'int32'), 10);
  for (let i = 0; i < 2; i++) await model.trainOnBatch(x, y);
  const t0 = performance.now();
  let loss = 0;
  for (let i = 0; i < steps; i++) loss = await model.trainOnBatch(x, y);
  const ms = (performance.now() - t0) / steps;
  return { backend: tf.getBackend(), ms_per_step: ms, parameters: model.countParams(), loss };
};
