gcloud compute tpus tpu-vm create nmt-v4 --zone=us-central2-b --project=proj --accelerator-type=v4-32 --version=tpu-ubuntu2204-base
gcloud compute tpus tpu-vm scp /tmp/nmt-launch-nmt-v4/config.yaml nmt-v4:/tmp/nmt_config.yaml --zone=us-central2-b --project=proj --worker=all
gcloud compute tpus tpu-vm ssh nmt-v4 --zone=us-central2-b --project=proj --worker=all '--command=python3 -m trainer.main --experiment=attention_seq2seq/tiny --config_file=/tmp/nmt_config.yaml --data_dir=gs://nmt-bucket/data/en-de --model_dir=gs://nmt-bucket/runs/tpu --strategy=tpu --tpu=nmt-v4'
