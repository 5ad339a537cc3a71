"""One distribution for the whole pipeline; exact versions live in requirements.lock."""

import setuptools

setuptools.setup(
    name="attention-seq2seq-pipeline",
    version="0.1.0",
    description="Beam preprocessing, a TFA attention seq2seq trainer, cluster launch and export.",
    python_requires="==3.11.*",
    packages=setuptools.find_packages(
        include=["pipeline*", "preprocessing*", "trainer*", "launch*"]
    ),
    install_requires=[
        "tensorflow==2.15.1",
        "tensorflow-addons==0.23.0",
        "tensorflow-text==2.15.0",
        "tensorflow-datasets",
        "tensorflow-metadata==1.16.1",
        "apache-beam[tfrecord]==2.77.0",
        "absl-py",
        "cloud-tpu-client",
        "sacrebleu",
        "pyyaml",
        "matplotlib<3.11",
    ],
    # GPU hosts: the CUDA libraries as wheels. Pinned with the rest in requirements-gpu.lock.
    extras_require={"gpu": ["tensorflow[and-cuda]==2.15.1"]},
    entry_points={
        "console_scripts": [
            "nmt-run=pipeline.run:main",
            "nmt-preprocess=preprocessing.main:run",
            "nmt-train=trainer.main:run",
            "nmt-evaluate=trainer.evaluate_main:run",
            "nmt-translate=trainer.translate:run",
            "nmt-launch=launch.main:run",
        ]
    },
)
