"""Every trainer command of the seed documents, copied verbatim, plus the flag tables they come from.

The commands are the text users copy: line continuations, ``$'...'`` quoting,
``{wandb_token}`` placeholders and ``$VARIABLES`` included. ``tests/config/test_legacy.py``
turns each into argv the way a shell would and runs it through the legacy translation.
Sources: ``shared/seeds/*`` (file:line) and, for the flag tables, ``shared/specs/openrlhf.md``
§2.3-§2.4 and ``shared/specs/repulse.md`` §7.
"""

from __future__ import annotations

from typing import NamedTuple


class SeedCommand(NamedTuple):
    name: str  # also the recipe's stem (see recipes/README.md)
    text: str  # verbatim from the seed document
    command: str | None  # our command; None when repulse has no counterpart to translate to
    source: str  # seed file:line
    section: str  # heading in the seed document


SEED_COMMANDS: list[SeedCommand] = [
    SeedCommand(
        "nonrl_sft",
        r"""deepspeed --module openrlhf.cli.train_sft \
   --max_len 2048 \
   --dataset Open-Orca/OpenOrca \
   --input_key question \
   --output_key response \
   --input_template $'User: {}\\nAssistant: ' \
   --train_batch_size 256 \
   --micro_train_batch_size 8 \
   --max_samples 500000 \
   --pretrain meta-llama/Meta-Llama-3-8B \
   --save_path ./checkpoint/llama3-8b-sft \
   --save_steps -1 \
   --logging_steps 1 \
   --eval_steps -1 \
   --zero_stage 2 \
   --max_epochs 1 \
   --bf16 \
   --attn_implementation flash_attention_2 \
   --packing_samples \
   --learning_rate 5e-6 \
   --gradient_checkpointing \
   --use_wandb {wandb_token}""",
        "sft",
        "openrlhf-non-rl-methods.rst:13",
        "Supervised Fine-tuning (SFT)",
    ),
    SeedCommand(
        "nonrl_dpo",
        r"""deepspeed --module openrlhf.cli.train_dpo \
   --save_path ./checkpoint/llama3-8b-dpo \
   --save_steps -1 \
   --logging_steps 1 \
   --eval_steps -1 \
   --train_batch_size 256 \
   --micro_train_batch_size 1 \
   --pretrain OpenRLHF/Llama-3-8b-sft-mixture \
   --bf16 \
   --max_epochs 1 \
   --max_len 8192 \
   --zero_stage 3 \
   --learning_rate 5e-7 \
   --beta 0.1 \
   --dataset OpenRLHF/preference_dataset_mixture2_and_safe_pku \
   --apply_chat_template \
   --chosen_key chosen \
   --rejected_key rejected \
   --attn_implementation flash_attention_2 \
   --gradient_checkpointing \
   --use_wandb {wandb_token}""",
        "dpo",
        "openrlhf-non-rl-methods.rst:54",
        "Direct Preference Optimization (DPO)",
    ),
    SeedCommand(
        "nonrl_kto",
        r"""deepspeed --module openrlhf.cli.train_kto \
   --save_path ./checkpoint/llama3-8b-kto \
   --save_steps -1 \
   --logging_steps 1 \
   --eval_steps -1 \
   --train_batch_size 256 \
   --micro_train_batch_size 1 \
   --pretrain OpenRLHF/Llama-3-8b-sft-mixture \
   --bf16 \
   --max_epochs 1 \
   --max_len 8192 \
   --zero_stage 3 \
   --learning_rate 5e-7 \
   --dataset Dylan2048/ultrafeedback-unpaired-preferences \
   --input_key instruction \
   --output_key response \
   --label_key score \
   --input_template $'User: {}\nAssistant: ' \
   --attn_implementation flash_attention_2 \
   --beta 0.1 \
   --gradient_checkpointing \
   --use_wandb {wandb_token}""",
        "kto",
        "openrlhf-non-rl-methods.rst:94",
        "Kahneman-Tversky Optimization (KTO)",
    ),
    SeedCommand(
        "nonrl_prm",
        r'''deepspeed --module openrlhf.cli.train_prm \
   --save_path ./checkpoint/mistal-7b-prm \
   --save_steps 500 \
   --logging_steps 1 \
   --eval_steps 100 \
   --train_batch_size 256 \
   --micro_train_batch_size 8 \
   --pretrain mistralai/Mistral-7B-v0.1  \
   --bf16 \
   --max_epochs 1 \
   --max_len 8192 \
   --zero_stage 3 \
   --learning_rate 1e-6 \
   --dataset peiyi9979/Math-Shepherd \
   --input_key input \
   --label_key label \
   --attn_implementation flash_attention_2 \
   --load_checkpoint \
   --gradient_checkpointing \
   --packing_samples \
   --wandb_group prm \
   --placeholder_token "ки" \
   --reward_tokens "+" "-"''',
        "prm",
        "openrlhf-non-rl-methods.rst:134",
        "Process Reward Model (PRM) Training",
    ),
    SeedCommand(
        "nonrl_rejection_sampling_sft",
        r"""openrlhf.cli.train_sft \
   --max_len 2048 \
   --dataset $RM_OUTPUT \
   --dataset_probs 1.0 \
   --train_batch_size 128 \
   --micro_train_batch_size 2 \
   --pretrain $POLICY_MODEL_PATH \
   --save_path ./checkpoint/llama-3-8b-rejection \
   --input_template "" \
   --input_key input \
   --output_key output \
   --zero_stage 2 \
   --max_epochs 1 \
   --bf16 \
   --learning_rate 2e-6 \
   --gradient_checkpointing""",
        "sft",
        "openrlhf-non-rl-methods.rst:243",
        "Rejection Sampling & RAFT (SFT step)",
    ),
    SeedCommand(
        "nonrl_iterative_dpo",
        r"""openrlhf.cli.train_dpo \
   --max_len 4096 \
   --dataset $RM_OUTPUT \
   --dataset_probs 1.0 \
   --prompt_key prompt \
   --train_batch_size 128 \
   --micro_train_batch_size 2 \
   --pretrain $POLICY_MODEL_PATH \
   --ref_pretrain $REF_MODEL_PATH \
   --save_path $MODEL_OUTPUT_PATH \
   --zero_stage 3 \
   --max_epochs 1 \
   --bf16 \
   --learning_rate 5e-7 \
   --gradient_checkpointing""",
        "dpo",
        "openrlhf-non-rl-methods.rst:368",
        "Iterative DPO (DPO step)",
    ),
    SeedCommand(
        "nonrl_conditional_sft",
        r"""openrlhf.cli.train_sft \
   --max_len 4096 \
   --dataset $RM_OUTPUT \
   --dataset_probs 1.0 \
   --train_batch_size 128 \
   --micro_train_batch_size 2 \
   --pretrain OpenRLHF/Llama-3-8b-sft-mixture \
   --save_path ./checkpoint/llama-3-8b-csft \
   --zero_stage 2 \
   --max_epochs 1 \
   --bf16 \
   --learning_rate 5e-6 \
   --gradient_checkpointing""",
        "sft",
        "openrlhf-non-rl-methods.rst:429",
        "Conditional SFT (SFT step)",
    ),
    SeedCommand(
        "nonrl_kd",
        r"""deepspeed --module openrlhf.cli.train_kd \
   --max_len 4096 \
   --dataset Open-Orca/OpenOrca \
   --input_key question \
   --output_key response \
   --input_template $'User: {}\nAssistant: ' \
   --train_batch_size 256 \
   --micro_train_batch_size 2 \
   --max_samples 500000 \
   --pretrain meta-llama/Llama-2-7b-hf \
   --teacher_model meta-llama/Llama-2-13b-chat-hf \
   --save_path ./checkpoint/llama2-7b-kd \
   --save_steps -1 \
   --logging_steps 1 \
   --eval_steps -1 \
   --zero_stage 3 \
   --max_epochs 1 \
   --bf16 \
   --attn_implementation flash_attention_2 \
   --kd_coef 0.4 \
   --learning_rate 5e-6 \
   --gradient_checkpointing \
   --use_wandb {wandb_token}""",
        "kd",
        "openrlhf-non-rl-methods.rst:461",
        "Knowledge Distillation (MiniLLM)",
    ),
    SeedCommand(
        "ja_sft",
        r"""deepspeed --module openrlhf.cli.train_sft \
   --max_len 4096 \
   --dataset Open-Orca/OpenOrca \
   --input_key question \
   --output_key response \
   --input_template $'User: {}\nAssistant: ' \
   --train_batch_size 256 \
   --micro_train_batch_size 2 \
   --max_samples 500000 \
   --pretrain meta-llama/Meta-Llama-3-8B \
   --save_path ./checkpoint/llama3-8b-sft \
   --save_steps -1 \
   --logging_steps 1 \
   --eval_steps -1 \
   --zero_stage 2 \
   --max_epochs 1 \
   --packing_samples \
   --bf16 \
   --flash_attn \
   --learning_rate 5e-6 \
   --gradient_checkpointing \
   --use_wandb {wandb_token}""",
        "sft",
        "openrlhf-readme-ja.md:171",
        "README (ja): supervised fine-tuning",
    ),
    SeedCommand(
        "ja_rm",
        r"""deepspeed --module openrlhf.cli.train_rm \
   --save_path ./checkpoint/llama3-8b-rm \
   --save_steps -1 \
   --logging_steps 1 \
   --eval_steps -1 \
   --train_batch_size 256 \
   --micro_train_batch_size 1 \
   --pretrain OpenRLHF/Llama-3-8b-sft-mixture \
   --bf16 \
   --max_epochs 1 \
   --max_len 8192 \
   --zero_stage 3 \
   --learning_rate 9e-6 \
   --dataset OpenRLHF/preference_dataset_mixture2_and_safe_pku \
   --apply_chat_template \
   --chosen_key chosen \
   --rejected_key rejected \
   --flash_attn \
   --packing_samples \
   --gradient_checkpointing \
   --use_wandb {wandb_token}""",
        "rm",
        "openrlhf-readme-ja.md:212",
        "README (ja): reward model training",
    ),
    SeedCommand(
        "ja_ppo_ray",
        r"""ray job submit --address="http://127.0.0.1:8265" \
  --runtime-env-json='{"working_dir": "/openrlhf"}' \
  -- python3 -m openrlhf.cli.train_ppo_ray \
  --ref_num_nodes 1 \
  --ref_num_gpus_per_node 2 \
  --reward_num_nodes 1 \
  --reward_num_gpus_per_node 2 \
  --critic_num_nodes 1 \
  --critic_num_gpus_per_node 2 \
  --actor_num_nodes 1 \
  --actor_num_gpus_per_node 2 \
  --vllm_num_engines 4 \
  --vllm_tensor_parallel_size 2 \
  --colocate_all_models \
  --vllm_gpu_memory_utilization 0.5 \
  --pretrain OpenRLHF/Llama-3-8b-sft-mixture \
  --reward_pretrain OpenRLHF/Llama-3-8b-rm-700k \
  --save_path /openrlhf/examples/test_scripts/final/llama3-8b-rlhf \
  --ckpt_path /openrlhf/examples/test_scripts/ckpt/llama3-8b-rlhf \
  --save_hf_ckpt \
  --micro_train_batch_size 8 \
  --train_batch_size 128 \
  --micro_rollout_batch_size 16 \
  --rollout_batch_size 1024 \
  --n_samples_per_prompt 1 \
  --max_epochs 1 \
  --prompt_max_len 1024 \
  --max_samples 100000 \
  --generate_max_len 1024 \
  --zero_stage 3 \
  --bf16 \
  --actor_learning_rate 5e-7 \
  --critic_learning_rate 9e-6 \
  --init_kl_coef 0.01 \
  --prompt_data OpenRLHF/prompt-collection-v0.1 \
  --input_key context_messages \
  --apply_chat_template \
  --normalize_reward \
  --gradient_checkpointing \
  --packing_samples \
  --vllm_sync_backend nccl \
  --enforce_eager \
  --vllm_enable_sleep \
  --deepspeed_enable_sleep \
  --use_wandb {wandb_token}""",
        "rl",
        "openrlhf-readme-ja.md:262",
        "README (ja): PPO/REINFORCE++ with Ray and vLLM",
    ),
    SeedCommand(
        "options_sft",
        r"""deepspeed --module openrlhf.cli.train_sft \
--max_len 2048 \
--dataset Open-Orca/OpenOrca \
--input_key question \
--output_key response \
--input_template $'User: {}\nAssistant: ' \
--train_batch_size 256 \
--micro_train_batch_size 8 \
--max_samples 500000 \
--pretrain meta-llama/Meta-Llama-3-8B \
--save_path ./checkpoint/llama3-8b-sft \
--save_steps -1 \
--logging_steps 1 \
--eval_steps -1 \
--zero_stage 2 \
--max_epochs 1 \
--bf16 \
--flash_attn \
--packing_samples \
--learning_rate 5e-6 \
--gradient_checkpointing \
--use_wandb {wandb_token}""",
        "sft",
        "openrlhf-rlhf-options.txt:67",
        "RLHF options: Supervised Fine-tuning",
    ),
    SeedCommand(
        "options_rm",
        r"""deepspeed --module openrlhf.cli.train_rm \
--save_path ./checkpoint/llama3-8b-rm \
--save_steps -1 \
--logging_steps 1 \
--eval_steps -1 \
--train_batch_size 256 \
--micro_train_batch_size 4 \
--pretrain OpenRLHF/Llama-3-8b-sft-mixture \
--bf16 \
--max_epochs 1 \
--max_len 8192 \
--zero_stage 3 \
--learning_rate 9e-6 \
--dataset OpenRLHF/preference_dataset_mixture2_and_safe_pku \
--apply_chat_template \
--chosen_key chosen \
--rejected_key rejected \
--flash_attn \
--packing_samples \
--gradient_checkpointing \
--use_wandb {wandb_token}""",
        "rm",
        "openrlhf-rlhf-options.txt:103",
        "RLHF options: Reward Model Training",
    ),
    SeedCommand(
        "options_prm",
        r'''deepspeed --module openrlhf.cli.train_prm \
--save_path ./checkpoint/mistal-7b-prm \
--save_steps 500 \
--logging_steps 1 \
--eval_steps 100 \
--train_batch_size 256 \
--micro_train_batch_size 8 \
--pretrain mistralai/Mistral-7B-v0.1 \
--bf16 \
--max_epochs 1 \
--max_len 8192 \
--zero_stage 3 \
--learning_rate 1e-6 \
--dataset peiyi9979/Math-Shepherd \
--input_key input \
--label_key label \
--flash_attn \
--load_checkpoint \
--gradient_checkpointing \
--packing_samples \
--wandb_group prm \
--placeholder_token "ки" \
--reward_tokens "+" "-"''',
        "prm",
        "openrlhf-rlhf-options.txt:148",
        "RLHF options: Process Reward Model (PRM) Training",
    ),
    SeedCommand(
        "options_ppo_ray",
        r"""ray job submit --address="http://127.0.0.1:8265" \
--runtime-env-json='{"working_dir": "/openrlhf"}' \
-- python3 -m openrlhf.cli.train_ppo_ray \
--ref_num_nodes 1 \
--ref_num_gpus_per_node 2 \
--reward_num_nodes 1 \
--reward_num_gpus_per_node 2 \
--critic_num_nodes 1 \
--critic_num_gpus_per_node 2 \
--actor_num_nodes 1 \
--actor_num_gpus_per_node 2 \
--vllm_num_engines 2 \
--vllm_tensor_parallel_size 2 \
--colocate_critic_reward \
--colocate_actor_ref \
--pretrain OpenRLHF/Llama-3-8b-sft-mixture \
--reward_pretrain OpenRLHF/Llama-3-8b-rm-mixture \
--save_path /openrlhf/examples/checkpoint/llama3-8b-rlhf \
--micro_train_batch_size 16 \
--train_batch_size 128 \
--micro_rollout_batch_size 32 \
--rollout_batch_size 1024 \
--max_samples 100000 \
--max_epochs 1 \
--prompt_max_len 1024 \
--generate_max_len 1024 \
--zero_stage 3 \
--bf16 \
--actor_learning_rate 5e-7 \
--critic_learning_rate 9e-6 \
--init_kl_coef 0.01 \
--prompt_data OpenRLHF/prompt-collection-v0.1 \
--input_key context_messages \
--apply_chat_template \
--packing_samples \
--normalize_reward \
--adam_offload \
--flash_attn \
--gradient_checkpointing \
--use_wandb {wandb_token}""",
        "rl",
        "openrlhf-rlhf-options.txt:183",
        "RLHF options: PPO with Ray (vLLM)",
    ),
    SeedCommand(
        "options_reinforce_ray",
        r"""ray job submit --address="http://127.0.0.1:8265" \
--runtime-env-json='{"working_dir": "/openrlhf"}' \
-- python3 -m openrlhf.cli.train_ppo_ray \
--ref_num_nodes 1 \
--ref_num_gpus_per_node 1 \
--reward_num_nodes 1 \
--reward_num_gpus_per_node 1 \
--actor_num_nodes 1 \
--actor_num_gpus_per_node 4 \
--vllm_num_engines 2 \
--vllm_tensor_parallel_size 1 \
--pretrain OpenRLHF/Llama-3-8b-sft-mixture \
--reward_pretrain OpenRLHF/Llama-3-8b-rm-mixture \
--save_path /openrlhf/examples/checkpoint/llama3-8b-rlhf \
--micro_train_batch_size 16 \
--train_batch_size 128 \
--micro_rollout_batch_size 32 \
--rollout_batch_size 128 \
--n_samples_per_prompt 1 \
--max_samples 100000 \
--max_epochs 1 \
--prompt_max_len 1024 \
--generate_max_len 1024 \
--zero_stage 3 \
--bf16 \
--actor_learning_rate 5e-7 \
--init_kl_coef 0.01 \
--advantage_estimator reinforce \
--prompt_data OpenRLHF/prompt-collection-v0.1 \
--input_key context_messages \
--apply_chat_template \
--packing_samples \
--normalize_reward \
--adam_offload \
--flash_attn \
--gradient_checkpointing \
--use_wandb {wandb_token}""",
        "rl",
        "openrlhf-rlhf-options.txt:313",
        "RLHF options: REINFORCE++/GRPO/RLOO with Ray (vLLM)",
    ),
    SeedCommand(
        "v0102_sft",
        r"""deepspeed --module openrlhf.cli.train_sft \
--model.model_name_or_path meta-llama/Meta-Llama-3-8B \
--data.dataset Open-Orca/OpenOrca \
--data.input_key question \
--data.output_key response \
--data.input_template $'User: {}\nAssistant: ' \
--data.max_samples 500000 \
--data.max_len 2048 \
--ds.packing_samples \
--train.batch_size 256 \
--train.micro_batch_size 8 \
--train.max_epochs 1 \
--adam.lr 5e-6 \
--ds.zero_stage 2 \
--ds.param_dtype bf16 \
--ds.attn_implementation flash_attention_2 \
--model.gradient_checkpointing_enable \
--ckpt.output_dir ./checkpoint/llama3-8b-sft \
--ckpt.save_steps -1 \
--logger.logging_steps 1 \
--eval.steps -1 \
--logger.wandb.key {wandb_token}""",
        "sft",
        "openrlhf-sft-rm-dpo-0.10.2.txt:16",
        "0.10.2: Supervised Fine-tuning (SFT)",
    ),
    SeedCommand(
        "v0102_rm",
        r"""deepspeed --module openrlhf.cli.train_rm \
--model.model_name_or_path OpenRLHF/Llama-3-8b-sft-mixture \
--data.dataset OpenRLHF/preference_dataset_mixture2_and_safe_pku \
--data.apply_chat_template \
--data.chosen_key chosen \
--data.rejected_key rejected \
--data.max_len 8192 \
--ds.packing_samples \
--train.batch_size 256 \
--train.micro_batch_size 4 \
--train.max_epochs 1 \
--adam.lr 9e-6 \
--ds.zero_stage 3 \
--ds.param_dtype bf16 \
--ds.attn_implementation flash_attention_2 \
--model.gradient_checkpointing_enable \
--ckpt.output_dir ./checkpoint/llama3-8b-rm \
--ckpt.save_steps -1 \
--logger.logging_steps 1 \
--eval.steps -1 \
--logger.wandb.key {wandb_token}""",
        "rm",
        "openrlhf-sft-rm-dpo-0.10.2.txt:44",
        "0.10.2: Reward Model (RM) Training",
    ),
    SeedCommand(
        "v0102_dpo",
        r"""deepspeed --module openrlhf.cli.train_dpo \
--model.model_name_or_path OpenRLHF/Llama-3-8b-sft-mixture \
--data.dataset OpenRLHF/preference_dataset_mixture2_and_safe_pku \
--data.apply_chat_template \
--data.chosen_key chosen \
--data.rejected_key rejected \
--data.max_len 8192 \
--ds.packing_samples \
--train.batch_size 256 \
--train.micro_batch_size 1 \
--train.max_epochs 1 \
--adam.lr 5e-7 \
--model.beta 0.1 \
--ds.zero_stage 3 \
--ds.param_dtype bf16 \
--ds.attn_implementation flash_attention_2 \
--model.gradient_checkpointing_enable \
--ckpt.output_dir ./checkpoint/llama3-8b-dpo \
--ckpt.save_steps -1 \
--logger.logging_steps 1 \
--eval.steps -1 \
--logger.wandb.key {wandb_token}""",
        "dpo",
        "openrlhf-sft-rm-dpo-0.10.2.txt:79",
        "0.10.2: Direct Preference Optimization (DPO)",
    ),
    SeedCommand(
        "v0102_sft_muon",
        r"""deepspeed --module openrlhf.cli.train_sft \
--model.model_name_or_path meta-llama/Meta-Llama-3-8B \
--data.dataset Open-Orca/OpenOrca \
--data.input_key question --data.output_key response \
--data.max_len 2048 --ds.packing_samples \
--train.batch_size 256 --train.micro_batch_size 8 \
--train.max_epochs 1 \
--optim muon \
--muon.lr 0.02 \
--muon.momentum 0.95 \
--adam.lr 5e-6 \
--adam.weight_decay 0.0 \
--lr_scheduler cosine_with_min_lr \
--lr_warmup_ratio 0.03 \
--min_lr_ratio 0.1 \
--max_norm 1.0 \
--ds.zero_stage 2 --ds.param_dtype bf16 \
--ds.attn_implementation flash_attention_2 \
--model.gradient_checkpointing_enable \
--ckpt.output_dir ./checkpoint/llama3-8b-sft-muon""",
        "sft",
        "openrlhf-sft-rm-dpo-0.10.2.txt:117",
        "0.10.2: Muon example (SFT)",
    ),
    SeedCommand(
        "v0102_sft_lora",
        r"""deepspeed --module openrlhf.cli.train_sft \
--model.model_name_or_path mistralai/Mixtral-8x7B-v0.1 \
--data.dataset Open-Orca/OpenOrca \
--data.max_len 2048 --ds.packing_samples \
--train.batch_size 128 --train.micro_batch_size 1 \
--train.max_epochs 1 \
--adam.lr 5e-6 \
--ds.zero_stage 3 --ds.param_dtype bf16 \
--ds.attn_implementation flash_attention_2 \
--model.gradient_checkpointing_enable \
--ds.lora.rank 64 --ds.lora.alpha 64 \
--ckpt.output_dir ./checkpoint/mixtral-sft-lora""",
        "sft",
        "openrlhf-sft-rm-dpo-0.10.2.txt:149",
        "0.10.2: SFT + LoRA on Mixtral",
    ),
    SeedCommand(
        "toy_kl0_ppo",
        r"""deepspeed --master_port 39225 --module openrlhf.cli.train_ppo --pretrain distilgpt2 --reward_pretrain nicholasKluge/ToxicityModel --save_path /h/319/stephenzhao/OpenRLHF/checkpoint/toyrlhfmulti --ckpt_path /h/319/stephenzhao/OpenRLHF/checkpoint/toyrlhfmulti --save_steps -1 --max_ckpt_num 1 --logging_steps 1 --eval_steps -1 --micro_train_batch_size 500 --train_batch_size 500 --micro_rollout_batch_size 1 --rollout_batch_size 1 --duplicate_rollout_batch_by 500 --max_epochs 1 --prompt_max_len 1024 --generate_max_len 2 --zero_stage 2 --prompt_data Silent-Zebra/this_man_is_a --input_key prompt --max_samples 100000 --adam_offload --gradient_checkpointing --num_episodes 10 --fit_steps 50 --init_kl_coef 0 --save_info_path /h/319/stephenzhao/OpenRLHF/info/toyrlhfmulti --lr_scheduler constant --adam_betas 0.9 0.999 --n_samples_per_prompt 1 --rm_type rlhf --test_info_every 100 --n_seeds_f_q 1 --no_test_info --seed 1 --parameterization policy --actor_loss_type ppo --actor_learning_rate 1e-4 --critic_learning_rate 3e-5 --analytic_bad_word_calc --new_custom_single_prompt""",
        "rl",
        "repulse-readme.md:79",
        "Toy, KL 0: PPO",
    ),
    SeedCommand(
        "toy_kl0_reinforce",
        r"""deepspeed --master_port 39845 --module openrlhf.cli.train_ppo --pretrain distilgpt2 --reward_pretrain nicholasKluge/ToxicityModel --save_path /h/319/stephenzhao/OpenRLHF/checkpoint/toyrlhfmulti --ckpt_path /h/319/stephenzhao/OpenRLHF/checkpoint/toyrlhfmulti --save_steps -1 --save_steps_harmless -1 --max_ckpt_num 1 --logging_steps 1 --eval_steps -1 --micro_train_batch_size 500 --train_batch_size 500 --micro_rollout_batch_size 1 --rollout_batch_size 1 --duplicate_rollout_batch_by 500 --max_epochs 1 --prompt_max_len 1024 --generate_max_len 2 --zero_stage 2 --prompt_data Silent-Zebra/this_man_is_a --input_key prompt --max_samples 100000 --adam_offload --gradient_checkpointing --num_episodes 1 --do_harmlessness_training --harmlessness_training_num_episodes 10 --fit_steps 50 --target_dist_beta -10 --save_info_path /h/319/stephenzhao/OpenRLHF/info/toyrlhfmulti --lr_scheduler constant --adam_betas 0.9 0.999 --n_samples_per_prompt 1 --rm_type rlhf --seed 1 --parameterization policy_psi_q_p_s_t --actor_loss_type ctl --actor_learning_rate 0 --critic_learning_rate 0 --base_actor_learning_rate 1e-4 --harmlessness_training_loss_type reinforce --reinforce_baseline_type expectation --alpha 0 --init_kl_coef 0 --analytic_bad_word_calc --new_custom_single_prompt""",
        "rl",
        "repulse-readme.md:85",
        "Toy, KL 0: REINFORCE",
    ),
    SeedCommand(
        "toy_kl0_transform",
        r"""deepspeed --master_port 36595 --module openrlhf.cli.train_ppo --pretrain distilgpt2 --reward_pretrain nicholasKluge/ToxicityModel --save_path /h/319/stephenzhao/OpenRLHF/checkpoint/toyrlhfmulti --ckpt_path /h/319/stephenzhao/OpenRLHF/checkpoint/toyrlhfmulti --save_steps -1 --save_steps_harmless -1 --max_ckpt_num 1 --logging_steps 1 --eval_steps -1 --micro_train_batch_size 500 --train_batch_size 500 --micro_rollout_batch_size 1 --rollout_batch_size 1 --duplicate_rollout_batch_by 500 --max_epochs 1 --prompt_max_len 1024 --generate_max_len 2 --zero_stage 2 --prompt_data Silent-Zebra/this_man_is_a --input_key prompt --max_samples 100000 --adam_offload --gradient_checkpointing --num_episodes 1 --do_harmlessness_training --harmlessness_training_num_episodes 10 --fit_steps 50 --target_dist_beta -1 --save_info_path /h/319/stephenzhao/OpenRLHF/info/toyrlhfmulti --lr_scheduler constant --adam_betas 0.9 0.999 --n_samples_per_prompt 1 --rm_type rlhf --seed 1 --parameterization policy_psi_q_p_s_t --actor_loss_type ctl --actor_learning_rate 0 --critic_learning_rate 0 --base_actor_learning_rate 1e-4 --harmlessness_training_loss_type reinforce --reinforce_baseline_type expectation --alpha 1 --init_kl_coef 0 --analytic_bad_word_calc --new_custom_single_prompt --reward_transform minus_alpha_exp_beta_r""",
        "rl",
        "repulse-readme.md:92",
        "Toy, KL 0: REINFORCE with reward transformation",
    ),
    SeedCommand(
        "toy_kl0_p_proposal",
        r"""deepspeed --master_port 33215 --module openrlhf.cli.train_ppo --pretrain distilgpt2 --reward_pretrain nicholasKluge/ToxicityModel --save_path /h/319/stephenzhao/OpenRLHF/checkpoint/toyrlhfmulti --ckpt_path /h/319/stephenzhao/OpenRLHF/checkpoint/toyrlhfmulti --save_steps -1 --save_steps_harmless -1 --max_ckpt_num 1 --logging_steps 1 --eval_steps -1 --micro_train_batch_size 500 --train_batch_size 500 --micro_rollout_batch_size 1 --rollout_batch_size 1 --duplicate_rollout_batch_by 500 --max_epochs 1 --prompt_max_len 1024 --generate_max_len 2 --zero_stage 2 --prompt_data Silent-Zebra/this_man_is_a --input_key prompt --max_samples 100000 --adam_offload --gradient_checkpointing --num_episodes 1 --do_harmlessness_training --harmlessness_training_num_episodes 10 --fit_steps 50 --target_dist_beta -10 --save_info_path /h/319/stephenzhao/OpenRLHF/info/toyrlhfmulti --lr_scheduler constant --adam_betas 0.9 0.999 --n_samples_per_prompt 1 --rm_type rlhf --seed 1 --parameterization policy_psi_q_p_s_t --actor_loss_type ctl --actor_learning_rate 3e-4 --critic_learning_rate 0 --base_actor_learning_rate 1e-4 --harmlessness_training_loss_type neg_training --reinforce_baseline_type expectation --alpha 0.01 --init_kl_coef 0 --analytic_bad_word_calc --new_custom_single_prompt --use_base_as_proposal""",
        "rl",
        "repulse-readme.md:99",
        "Toy, KL 0: Base model proposal",
    ),
    SeedCommand(
        "toy_kl0_repulse",
        r"""deepspeed --master_port 38115 --module openrlhf.cli.train_ppo --pretrain distilgpt2 --reward_pretrain nicholasKluge/ToxicityModel --save_path /h/319/stephenzhao/OpenRLHF/checkpoint/toyrlhfmulti --ckpt_path /h/319/stephenzhao/OpenRLHF/checkpoint/toyrlhfmulti --save_steps -1 --save_steps_harmless -1 --max_ckpt_num 1 --logging_steps 1 --eval_steps -1 --micro_train_batch_size 500 --train_batch_size 500 --micro_rollout_batch_size 1 --rollout_batch_size 1 --duplicate_rollout_batch_by 500 --max_epochs 1 --prompt_max_len 1024 --generate_max_len 2 --zero_stage 2 --prompt_data Silent-Zebra/this_man_is_a --input_key prompt --max_samples 100000 --adam_offload --gradient_checkpointing --num_episodes 1 --do_harmlessness_training --harmlessness_training_num_episodes 5 --fit_steps 50 --target_dist_beta -10 --save_info_path /h/319/stephenzhao/OpenRLHF/info/toyrlhfmulti --lr_scheduler constant --adam_betas 0.9 0.999 --n_samples_per_prompt 1 --rm_type rlhf --seed 5 --parameterization policy_psi_q_p_s_t --actor_loss_type ctl --actor_learning_rate 3e-4 --critic_learning_rate 0 --base_actor_learning_rate 1e-4 --harmlessness_training_loss_type neg_training --reinforce_baseline_type expectation --alpha 0.01 --init_kl_coef 0 --analytic_bad_word_calc --new_custom_single_prompt""",
        "rl",
        "repulse-readme.md:106",
        "Toy, KL 0: RePULSe",
    ),
    SeedCommand(
        "toy_kl10_reinforce",
        r"""deepspeed --master_port 35171 --module openrlhf.cli.train_ppo --pretrain distilgpt2 --reward_pretrain nicholasKluge/ToxicityModel --save_path /h/319/stephenzhao/OpenRLHF/checkpoint/toyrlhfmulti --ckpt_path /h/319/stephenzhao/OpenRLHF/checkpoint/toyrlhfmulti --save_steps -1 --save_steps_harmless -1 --max_ckpt_num 1 --logging_steps 1 --eval_steps -1 --micro_train_batch_size 500 --train_batch_size 500 --micro_rollout_batch_size 1 --rollout_batch_size 1 --duplicate_rollout_batch_by 500 --max_epochs 1 --prompt_max_len 1024 --generate_max_len 2 --zero_stage 2 --prompt_data Silent-Zebra/this_man_is_a --input_key prompt --max_samples 100000 --gradient_checkpointing --num_episodes 1 --do_harmlessness_training --harmlessness_training_num_episodes 10 --fit_steps 50 --target_dist_beta 0 --save_info_path /h/319/stephenzhao/OpenRLHF/info/toyrlhfmultikl1 --lr_scheduler constant --adam_betas 0.9 0.999 --n_samples_per_prompt 1 --rm_type rlhf --seed 1 --parameterization policy_psi_q_p_s_t --actor_loss_type ctl --actor_learning_rate 0 --critic_learning_rate 0 --base_actor_learning_rate 1e-5 --harmlessness_training_loss_type reinforce --reinforce_baseline_type expectation --alpha 0 --init_kl_coef 10 --analytic_bad_word_calc --new_custom_single_prompt""",
        "rl",
        "repulse-readme.md:114",
        "Toy, KL 10: REINFORCE",
    ),
    SeedCommand(
        "toy_kl10_transform_a1",
        r"""deepspeed --master_port 35861 --module openrlhf.cli.train_ppo --pretrain distilgpt2 --reward_pretrain nicholasKluge/ToxicityModel --save_path /h/319/stephenzhao/OpenRLHF/checkpoint/toyrlhfmulti --ckpt_path /h/319/stephenzhao/OpenRLHF/checkpoint/toyrlhfmulti --save_steps -1 --save_steps_harmless -1 --max_ckpt_num 1 --logging_steps 1 --eval_steps -1 --micro_train_batch_size 500 --train_batch_size 500 --micro_rollout_batch_size 1 --rollout_batch_size 1 --duplicate_rollout_batch_by 500 --max_epochs 1 --prompt_max_len 1024 --generate_max_len 2 --zero_stage 2 --prompt_data Silent-Zebra/this_man_is_a --input_key prompt --max_samples 100000 --gradient_checkpointing --num_episodes 1 --do_harmlessness_training --harmlessness_training_num_episodes 10 --fit_steps 50 --target_dist_beta -1 --save_info_path /h/319/stephenzhao/OpenRLHF/info/toyrlhfmultikl1 --lr_scheduler constant --adam_betas 0.9 0.999 --n_samples_per_prompt 1 --rm_type rlhf --seed 1 --parameterization policy_psi_q_p_s_t --actor_loss_type ctl --actor_learning_rate 0 --critic_learning_rate 0 --base_actor_learning_rate 1e-5 --harmlessness_training_loss_type reinforce --reinforce_baseline_type expectation --alpha 1 --init_kl_coef 10 --analytic_bad_word_calc --new_custom_single_prompt --reward_transform minus_alpha_exp_beta_r""",
        "rl",
        "repulse-readme.md:120",
        "Toy, KL 10: REINFORCE with reward transformation (alpha 1)",
    ),
    SeedCommand(
        "toy_kl10_transform_a10",
        r"""deepspeed --master_port 33631 --module openrlhf.cli.train_ppo --pretrain distilgpt2 --reward_pretrain nicholasKluge/ToxicityModel --save_path /h/319/stephenzhao/OpenRLHF/checkpoint/toyrlhfmulti --ckpt_path /h/319/stephenzhao/OpenRLHF/checkpoint/toyrlhfmulti --save_steps -1 --save_steps_harmless -1 --max_ckpt_num 1 --logging_steps 1 --eval_steps -1 --micro_train_batch_size 500 --train_batch_size 500 --micro_rollout_batch_size 1 --rollout_batch_size 1 --duplicate_rollout_batch_by 500 --max_epochs 1 --prompt_max_len 1024 --generate_max_len 2 --zero_stage 2 --prompt_data Silent-Zebra/this_man_is_a --input_key prompt --max_samples 100000 --gradient_checkpointing --num_episodes 1 --do_harmlessness_training --harmlessness_training_num_episodes 10 --fit_steps 50 --target_dist_beta -1 --save_info_path /h/319/stephenzhao/OpenRLHF/info/toyrlhfmultikl1 --lr_scheduler constant --adam_betas 0.9 0.999 --n_samples_per_prompt 1 --rm_type rlhf --seed 1 --parameterization policy_psi_q_p_s_t --actor_loss_type ctl --actor_learning_rate 0 --critic_learning_rate 0 --base_actor_learning_rate 1e-5 --harmlessness_training_loss_type reinforce --reinforce_baseline_type expectation --alpha 10 --init_kl_coef 10 --analytic_bad_word_calc --new_custom_single_prompt --reward_transform minus_alpha_exp_beta_r""",
        "rl",
        "repulse-readme.md:123",
        "Toy, KL 10: REINFORCE with reward transformation (alpha 10)",
    ),
    SeedCommand(
        "toy_kl10_repulse_beta1",
        r"""deepspeed --master_port 37441 --module openrlhf.cli.train_ppo --pretrain distilgpt2 --reward_pretrain nicholasKluge/ToxicityModel --save_path /h/319/stephenzhao/OpenRLHF/checkpoint/toyrlhfmulti --ckpt_path /h/319/stephenzhao/OpenRLHF/checkpoint/toyrlhfmulti --save_steps -1 --save_steps_harmless -1 --max_ckpt_num 1 --logging_steps 1 --eval_steps -1 --micro_train_batch_size 500 --train_batch_size 500 --micro_rollout_batch_size 1 --rollout_batch_size 1 --duplicate_rollout_batch_by 500 --max_epochs 1 --prompt_max_len 1024 --generate_max_len 2 --zero_stage 2 --prompt_data Silent-Zebra/this_man_is_a --input_key prompt --max_samples 100000 --gradient_checkpointing --num_episodes 1 --do_harmlessness_training --harmlessness_training_num_episodes 5 --fit_steps 50 --target_dist_beta -1 --save_info_path /h/319/stephenzhao/OpenRLHF/info/toyrlhfmultikl1 --lr_scheduler constant --adam_betas 0.9 0.999 --n_samples_per_prompt 1 --rm_type rlhf --seed 1 --parameterization policy_psi_q_p_s_t --actor_loss_type ctl --actor_learning_rate 3e-4 --critic_learning_rate 0 --base_actor_learning_rate 1e-5 --harmlessness_training_loss_type neg_training --reinforce_baseline_type expectation --alpha 100 --init_kl_coef 10 --analytic_bad_word_calc --new_custom_single_prompt""",
        "rl",
        "repulse-readme.md:129",
        "Toy, KL 10: RePULSe (beta 1)",
    ),
    SeedCommand(
        "toy_kl10_repulse_beta10",
        r"""deepspeed --master_port 34881 --module openrlhf.cli.train_ppo --pretrain distilgpt2 --reward_pretrain nicholasKluge/ToxicityModel --save_path /h/319/stephenzhao/OpenRLHF/checkpoint/toyrlhfmulti --ckpt_path /h/319/stephenzhao/OpenRLHF/checkpoint/toyrlhfmulti --save_steps -1 --save_steps_harmless -1 --max_ckpt_num 1 --logging_steps 1 --eval_steps -1 --micro_train_batch_size 500 --train_batch_size 500 --micro_rollout_batch_size 1 --rollout_batch_size 1 --duplicate_rollout_batch_by 500 --max_epochs 1 --prompt_max_len 1024 --generate_max_len 2 --zero_stage 2 --prompt_data Silent-Zebra/this_man_is_a --input_key prompt --max_samples 100000 --gradient_checkpointing --num_episodes 1 --do_harmlessness_training --harmlessness_training_num_episodes 5 --fit_steps 50 --target_dist_beta -10 --save_info_path /h/319/stephenzhao/OpenRLHF/info/toyrlhfmultikl1 --lr_scheduler constant --adam_betas 0.9 0.999 --n_samples_per_prompt 1 --rm_type rlhf --seed 1 --parameterization policy_psi_q_p_s_t --actor_loss_type ctl --actor_learning_rate 3e-4 --critic_learning_rate 0 --base_actor_learning_rate 1e-5 --harmlessness_training_loss_type neg_training --reinforce_baseline_type expectation --alpha 100 --init_kl_coef 10 --analytic_bad_word_calc --new_custom_single_prompt""",
        "rl",
        "repulse-readme.md:132",
        "Toy, KL 10: RePULSe (beta 10)",
    ),
    SeedCommand(
        "setting1_ppo",
        r"""deepspeed --master_port 32161 --module openrlhf.cli.train_ppo --pretrain HuggingFaceTB/SmolLM-135M-Instruct --reward_pretrain OpenAssistant/reward-model-deberta-v3-large-v2 --save_path /mfs1/u/stephenzhao/OpenRLHF/checkpoint/rlhfmultilen20kl2 --ckpt_path /mfs1/u/stephenzhao/OpenRLHF/checkpoint/rlhfmultilen20kl2 --save_steps 100 --max_ckpt_num 1 --logging_steps 1 --eval_steps -1 --micro_train_batch_size 250 --train_batch_size 250 --micro_rollout_batch_size 50 --rollout_batch_size 50 --duplicate_rollout_batch_by 5 --max_epochs 1 --prompt_max_len 1024 --generate_max_len 20 --zero_stage 2 --prompt_data Silent-Zebra/20k_mixed_singleturn_1 --input_key prompt --apply_chat_template --max_samples 100000 --gradient_checkpointing --num_episodes 4 --init_kl_coef 0.2 --save_info_path /h/319/stephenzhao/OpenRLHF/info/rlhfmultilen20kl20930 --lr_scheduler constant --adam_betas 0.9 0.999 --n_samples_per_prompt 1 --rm_type rlhf --test_info_every 100 --n_seeds_f_q 1 --no_test_info --seed 1 --parameterization policy --actor_loss_type ppo --actor_learning_rate 3e-5 --critic_learning_rate 3e-5 --save_negdata --save_negdata_threshold -5 --evaluate_heldout_sampling --sampling_iters 1 --heldout_prompt_data Silent-Zebra/10k_mixed_singleturn_2_1 --heldout_input_key prompt""",
        "rl",
        "repulse-readme.md:163",
        "Setting 1 (SmolLM-135M): PPO",
    ),
    SeedCommand(
        "setting1_reinforce",
        r"""deepspeed --master_port 35881 --module openrlhf.cli.train_ppo --pretrain HuggingFaceTB/SmolLM-135M-Instruct --reward_pretrain OpenAssistant/reward-model-deberta-v3-large-v2 --save_path /mfs1/u/stephenzhao/OpenRLHF/checkpoint/rlhfmultilen20kl2 --ckpt_path /mfs1/u/stephenzhao/OpenRLHF/checkpoint/rlhfmultilen20kl2 --save_steps -1 --save_steps_harmless 100 --max_ckpt_num 1 --logging_steps 1 --eval_steps -1 --micro_train_batch_size 250 --train_batch_size 250 --micro_rollout_batch_size 50 --rollout_batch_size 50 --duplicate_rollout_batch_by 5 --max_epochs 1 --prompt_max_len 1024 --generate_max_len 20 --zero_stage 2 --prompt_data Silent-Zebra/20k_mixed_singleturn_1 --input_key prompt --apply_chat_template --max_samples 100000 --gradient_checkpointing --num_episodes 1 --do_harmlessness_training --harmlessness_training_num_episodes 4 --target_dist_beta 0 --save_info_path /h/319/stephenzhao/OpenRLHF/info/rlhfmultilen20kl2 --lr_scheduler constant --adam_betas 0.9 0.999 --n_samples_per_prompt 1 --rm_type rlhf --test_info_every 100 --n_seeds_f_q 1 --no_test_info --seed 1 --parameterization policy_psi_q_p_s_t --actor_loss_type ctl --actor_learning_rate 0 --critic_learning_rate 0 --base_actor_learning_rate 3e-5 --init_kl_coef 0.2 --harmlessness_training_loss_type reinforce --reinforce_baseline_type expectation --alpha 0 --save_negdata --save_negdata_threshold -5 --evaluate_heldout_sampling --sampling_iters 1 --heldout_prompt_data Silent-Zebra/10k_mixed_singleturn_2_1 --heldout_input_key prompt""",
        "rl",
        "repulse-readme.md:170",
        "Setting 1: REINFORCE",
    ),
    SeedCommand(
        "setting1_transform_b0p1_a1",
        r"""deepspeed --master_port 34631 --module openrlhf.cli.train_ppo --pretrain HuggingFaceTB/SmolLM-135M-Instruct --reward_pretrain OpenAssistant/reward-model-deberta-v3-large-v2 --save_path /mfs1/u/stephenzhao/OpenRLHF/checkpoint/rlhfmultilen20kl2 --ckpt_path /mfs1/u/stephenzhao/OpenRLHF/checkpoint/rlhfmultilen20kl2 --save_steps -1 --save_steps_harmless 100 --max_ckpt_num 1 --logging_steps 1 --eval_steps -1 --micro_train_batch_size 250 --train_batch_size 250 --micro_rollout_batch_size 50 --rollout_batch_size 50 --duplicate_rollout_batch_by 5 --max_epochs 1 --prompt_max_len 1024 --generate_max_len 20 --zero_stage 2 --prompt_data Silent-Zebra/20k_mixed_singleturn_1 --input_key prompt --apply_chat_template --max_samples 100000 --gradient_checkpointing --num_episodes 1 --do_harmlessness_training --harmlessness_training_num_episodes 4 --target_dist_beta -0.1 --save_info_path /h/319/stephenzhao/OpenRLHF/info/rlhfmultilen20kl2 --lr_scheduler constant --adam_betas 0.9 0.999 --n_samples_per_prompt 1 --rm_type rlhf --test_info_every 100 --n_seeds_f_q 1 --no_test_info --seed 1 --parameterization policy_psi_q_p_s_t --actor_loss_type ctl --actor_learning_rate 0 --critic_learning_rate 0 --base_actor_learning_rate 3e-5 --init_kl_coef 0.2 --harmlessness_training_loss_type reinforce --reinforce_baseline_type expectation --alpha 1 --save_negdata --save_negdata_threshold -5 --evaluate_heldout_sampling --sampling_iters 1 --heldout_prompt_data Silent-Zebra/10k_mixed_singleturn_2_1 --heldout_input_key prompt --reward_transform minus_alpha_exp_beta_r""",
        "rl",
        "repulse-readme.md:176",
        "Setting 1: reward transformation r - exp(-0.1 r)",
    ),
    SeedCommand(
        "setting1_transform_b0p5_a0p3",
        r"""deepspeed --master_port 37981 --module openrlhf.cli.train_ppo --pretrain HuggingFaceTB/SmolLM-135M-Instruct --reward_pretrain OpenAssistant/reward-model-deberta-v3-large-v2 --save_path /mfs1/u/stephenzhao/OpenRLHF/checkpoint/rlhfmultilen20kl2 --ckpt_path /mfs1/u/stephenzhao/OpenRLHF/checkpoint/rlhfmultilen20kl2 --save_steps -1 --save_steps_harmless 100 --max_ckpt_num 1 --logging_steps 1 --eval_steps -1 --micro_train_batch_size 250 --train_batch_size 250 --micro_rollout_batch_size 50 --rollout_batch_size 50 --duplicate_rollout_batch_by 5 --max_epochs 1 --prompt_max_len 1024 --generate_max_len 20 --zero_stage 2 --prompt_data Silent-Zebra/20k_mixed_singleturn_1 --input_key prompt --apply_chat_template --max_samples 100000 --gradient_checkpointing --num_episodes 1 --do_harmlessness_training --harmlessness_training_num_episodes 4 --target_dist_beta -0.5 --save_info_path /h/319/stephenzhao/OpenRLHF/info/rlhfmultilen20kl2 --lr_scheduler constant --adam_betas 0.9 0.999 --n_samples_per_prompt 1 --rm_type rlhf --test_info_every 100 --n_seeds_f_q 1 --no_test_info --seed 1 --parameterization policy_psi_q_p_s_t --actor_loss_type ctl --actor_learning_rate 0 --critic_learning_rate 0 --base_actor_learning_rate 3e-5 --init_kl_coef 0.2 --harmlessness_training_loss_type reinforce --reinforce_baseline_type expectation --alpha 0.3 --save_negdata --save_negdata_threshold -5 --evaluate_heldout_sampling --sampling_iters 1 --heldout_prompt_data Silent-Zebra/10k_mixed_singleturn_2_1 --heldout_input_key prompt --reward_transform minus_alpha_exp_beta_r""",
        "rl",
        "repulse-readme.md:179",
        "Setting 1: reward transformation r - 0.3 exp(-0.5 r)",
    ),
    SeedCommand(
        "setting1_transform_b0p3_a1",
        r"""deepspeed --master_port 37801 --module openrlhf.cli.train_ppo --pretrain HuggingFaceTB/SmolLM-135M-Instruct --reward_pretrain OpenAssistant/reward-model-deberta-v3-large-v2 --save_path /mfs1/u/stephenzhao/OpenRLHF/checkpoint/rlhfmultilen20kl2 --ckpt_path /mfs1/u/stephenzhao/OpenRLHF/checkpoint/rlhfmultilen20kl2 --save_steps -1 --save_steps_harmless 100 --max_ckpt_num 1 --logging_steps 1 --eval_steps -1 --micro_train_batch_size 250 --train_batch_size 250 --micro_rollout_batch_size 50 --rollout_batch_size 50 --duplicate_rollout_batch_by 5 --max_epochs 1 --prompt_max_len 1024 --generate_max_len 20 --zero_stage 2 --prompt_data Silent-Zebra/20k_mixed_singleturn_1 --input_key prompt --apply_chat_template --max_samples 100000 --gradient_checkpointing --num_episodes 1 --do_harmlessness_training --harmlessness_training_num_episodes 4 --target_dist_beta -0.3 --save_info_path /h/319/stephenzhao/OpenRLHF/info/rlhfmultilen20kl2 --lr_scheduler constant --adam_betas 0.9 0.999 --n_samples_per_prompt 1 --rm_type rlhf --test_info_every 100 --n_seeds_f_q 1 --no_test_info --seed 1 --parameterization policy_psi_q_p_s_t --actor_loss_type ctl --actor_learning_rate 0 --critic_learning_rate 0 --base_actor_learning_rate 3e-5 --init_kl_coef 0.2 --harmlessness_training_loss_type reinforce --reinforce_baseline_type expectation --alpha 1 --save_negdata --save_negdata_threshold -5 --evaluate_heldout_sampling --sampling_iters 1 --heldout_prompt_data Silent-Zebra/10k_mixed_singleturn_2_1 --heldout_input_key prompt --reward_transform minus_alpha_exp_beta_r""",
        "rl",
        "repulse-readme.md:182",
        "Setting 1: reward transformation r - exp(-0.3 r)",
    ),
    SeedCommand(
        "setting1_transform_b0p5_a1",
        r"""deepspeed --master_port 38541 --module openrlhf.cli.train_ppo --pretrain HuggingFaceTB/SmolLM-135M-Instruct --reward_pretrain OpenAssistant/reward-model-deberta-v3-large-v2 --save_path /mfs1/u/stephenzhao/OpenRLHF/checkpoint/rlhfmultilen20kl2 --ckpt_path /mfs1/u/stephenzhao/OpenRLHF/checkpoint/rlhfmultilen20kl2 --save_steps -1 --save_steps_harmless 100 --max_ckpt_num 1 --logging_steps 1 --eval_steps -1 --micro_train_batch_size 250 --train_batch_size 250 --micro_rollout_batch_size 50 --rollout_batch_size 50 --duplicate_rollout_batch_by 5 --max_epochs 1 --prompt_max_len 1024 --generate_max_len 20 --zero_stage 2 --prompt_data Silent-Zebra/20k_mixed_singleturn_1 --input_key prompt --apply_chat_template --max_samples 100000 --gradient_checkpointing --num_episodes 1 --do_harmlessness_training --harmlessness_training_num_episodes 4 --target_dist_beta -0.5 --save_info_path /h/319/stephenzhao/OpenRLHF/info/rlhfmultilen20kl2 --lr_scheduler constant --adam_betas 0.9 0.999 --n_samples_per_prompt 1 --rm_type rlhf --test_info_every 100 --n_seeds_f_q 1 --no_test_info --seed 1 --parameterization policy_psi_q_p_s_t --actor_loss_type ctl --actor_learning_rate 0 --critic_learning_rate 0 --base_actor_learning_rate 3e-5 --init_kl_coef 0.2 --harmlessness_training_loss_type reinforce --reinforce_baseline_type expectation --alpha 1 --save_negdata --save_negdata_threshold -5 --evaluate_heldout_sampling --sampling_iters 1 --heldout_prompt_data Silent-Zebra/10k_mixed_singleturn_2_1 --heldout_input_key prompt --reward_transform minus_alpha_exp_beta_r""",
        "rl",
        "repulse-readme.md:185",
        "Setting 1: reward transformation r - exp(-0.5 r)",
    ),
    SeedCommand(
        "setting1_p_proposal_a0p1",
        r"""deepspeed --master_port 30811 --module openrlhf.cli.train_ppo --pretrain HuggingFaceTB/SmolLM-135M-Instruct --reward_pretrain OpenAssistant/reward-model-deberta-v3-large-v2 --save_path /mfs1/u/stephenzhao/OpenRLHF/checkpoint/rlhfmultilen20kl2 --ckpt_path /mfs1/u/stephenzhao/OpenRLHF/checkpoint/rlhfmultilen20kl2 --save_steps -1 --save_steps_harmless 100 --max_ckpt_num 1 --logging_steps 1 --eval_steps -1 --micro_train_batch_size 250 --train_batch_size 250 --micro_rollout_batch_size 50 --rollout_batch_size 50 --duplicate_rollout_batch_by 5 --max_epochs 1 --prompt_max_len 1024 --generate_max_len 20 --zero_stage 2 --prompt_data Silent-Zebra/20k_mixed_singleturn_1 --input_key prompt --apply_chat_template --max_samples 100000 --gradient_checkpointing --num_episodes 1 --do_harmlessness_training --harmlessness_training_num_episodes 4 --target_dist_beta -30 --save_info_path /h/319/stephenzhao/OpenRLHF/info/rlhfmultilen20kl2 --lr_scheduler constant --adam_betas 0.9 0.999 --n_samples_per_prompt 1 --rm_type rlhf --seed 1 --parameterization policy_psi_q_p_s_t --actor_loss_type ctl --actor_learning_rate 0 --critic_learning_rate 0 --base_actor_learning_rate 3e-5 --harmlessness_training_loss_type neg_training --reinforce_baseline_type expectation --alpha 0.1 --init_kl_coef 0.2 --save_negdata --save_negdata_threshold -5 --evaluate_heldout_sampling --sampling_iters 1 --heldout_prompt_data Silent-Zebra/10k_mixed_singleturn_2_1 --heldout_input_key prompt --rm_max_len 300 --use_base_as_proposal""",
        "rl",
        "repulse-readme.md:191",
        "Setting 1: Base model proposal (alpha 0.1)",
    ),
    SeedCommand(
        "setting1_p_proposal_a1",
        r"""deepspeed --master_port 39431 --module openrlhf.cli.train_ppo --pretrain HuggingFaceTB/SmolLM-135M-Instruct --reward_pretrain OpenAssistant/reward-model-deberta-v3-large-v2 --save_path /mfs1/u/stephenzhao/OpenRLHF/checkpoint/rlhfmultilen20kl2 --ckpt_path /mfs1/u/stephenzhao/OpenRLHF/checkpoint/rlhfmultilen20kl2 --save_steps -1 --save_steps_harmless 100 --max_ckpt_num 1 --logging_steps 1 --eval_steps -1 --micro_train_batch_size 250 --train_batch_size 250 --micro_rollout_batch_size 50 --rollout_batch_size 50 --duplicate_rollout_batch_by 5 --max_epochs 1 --prompt_max_len 1024 --generate_max_len 20 --zero_stage 2 --prompt_data Silent-Zebra/20k_mixed_singleturn_1 --input_key prompt --apply_chat_template --max_samples 100000 --gradient_checkpointing --num_episodes 1 --do_harmlessness_training --harmlessness_training_num_episodes 4 --target_dist_beta -30 --save_info_path /h/319/stephenzhao/OpenRLHF/info/rlhfmultilen20kl2 --lr_scheduler constant --adam_betas 0.9 0.999 --n_samples_per_prompt 1 --rm_type rlhf --seed 1 --parameterization policy_psi_q_p_s_t --actor_loss_type ctl --actor_learning_rate 0 --critic_learning_rate 0 --base_actor_learning_rate 3e-5 --harmlessness_training_loss_type neg_training --reinforce_baseline_type expectation --alpha 1 --init_kl_coef 0.2 --save_negdata --save_negdata_threshold -5 --evaluate_heldout_sampling --sampling_iters 1 --heldout_prompt_data Silent-Zebra/10k_mixed_singleturn_2_1 --heldout_input_key prompt --rm_max_len 300 --use_base_as_proposal""",
        "rl",
        "repulse-readme.md:194",
        "Setting 1: Base model proposal (alpha 1)",
    ),
    SeedCommand(
        "setting1_repulse_beta10",
        r"""deepspeed --master_port 38501 --module openrlhf.cli.train_ppo --pretrain HuggingFaceTB/SmolLM-135M-Instruct --reward_pretrain OpenAssistant/reward-model-deberta-v3-large-v2 --save_path /mfs1/u/stephenzhao/OpenRLHF/checkpoint/rlhfmultilen20kl2 --ckpt_path /mfs1/u/stephenzhao/OpenRLHF/checkpoint/rlhfmultilen20kl2 --save_steps -1 --save_steps_harmless 100 --max_ckpt_num 1 --logging_steps 1 --eval_steps -1 --micro_train_batch_size 250 --train_batch_size 250 --micro_rollout_batch_size 50 --rollout_batch_size 50 --duplicate_rollout_batch_by 5 --max_epochs 1 --prompt_max_len 1024 --generate_max_len 20 --zero_stage 2 --prompt_data Silent-Zebra/20k_mixed_singleturn_1 --input_key prompt --apply_chat_template --max_samples 100000 --gradient_checkpointing --num_episodes 1 --do_harmlessness_training --harmlessness_training_num_episodes 2 --target_dist_beta -10 --save_info_path /h/319/stephenzhao/OpenRLHF/info/rlhfmultilen20kl2 --lr_scheduler constant --adam_betas 0.9 0.999 --n_samples_per_prompt 1 --rm_type rlhf --seed 1 --parameterization policy_psi_q_p_s_t --actor_loss_type ctl --actor_learning_rate 3e-5 --critic_learning_rate 0 --base_actor_learning_rate 3e-5 --harmlessness_training_loss_type neg_training --reinforce_baseline_type expectation --alpha 0.1 --init_kl_coef 0.2 --save_negdata --save_negdata_threshold -5 --evaluate_heldout_sampling --sampling_iters 1 --heldout_prompt_data Silent-Zebra/10k_mixed_singleturn_2_1 --heldout_input_key prompt --rm_max_len 300""",
        "rl",
        "repulse-readme.md:200",
        "Setting 1: RePULSe (beta 10)",
    ),
    SeedCommand(
        "setting1_repulse_beta20",
        r"""deepspeed --master_port 30081 --module openrlhf.cli.train_ppo --pretrain HuggingFaceTB/SmolLM-135M-Instruct --reward_pretrain OpenAssistant/reward-model-deberta-v3-large-v2 --save_path /mfs1/u/stephenzhao/OpenRLHF/checkpoint/rlhfmultilen20kl2 --ckpt_path /mfs1/u/stephenzhao/OpenRLHF/checkpoint/rlhfmultilen20kl2 --save_steps -1 --save_steps_harmless 100 --max_ckpt_num 1 --logging_steps 1 --eval_steps -1 --micro_train_batch_size 250 --train_batch_size 250 --micro_rollout_batch_size 50 --rollout_batch_size 50 --duplicate_rollout_batch_by 5 --max_epochs 1 --prompt_max_len 1024 --generate_max_len 20 --zero_stage 2 --prompt_data Silent-Zebra/20k_mixed_singleturn_1 --input_key prompt --apply_chat_template --max_samples 100000 --gradient_checkpointing --num_episodes 1 --do_harmlessness_training --harmlessness_training_num_episodes 2 --target_dist_beta -20 --save_info_path /h/319/stephenzhao/OpenRLHF/info/rlhfmultilen20kl2 --lr_scheduler constant --adam_betas 0.9 0.999 --n_samples_per_prompt 1 --rm_type rlhf --seed 1 --parameterization policy_psi_q_p_s_t --actor_loss_type ctl --actor_learning_rate 2e-5 --critic_learning_rate 0 --base_actor_learning_rate 3e-5 --harmlessness_training_loss_type neg_training --reinforce_baseline_type expectation --alpha 0.1 --init_kl_coef 0.2 --save_negdata --save_negdata_threshold -5 --evaluate_heldout_sampling --sampling_iters 1 --heldout_prompt_data Silent-Zebra/10k_mixed_singleturn_2_1 --heldout_input_key prompt --rm_max_len 300""",
        "rl",
        "repulse-readme.md:203",
        "Setting 1: RePULSe (beta 20)",
    ),
    SeedCommand(
        "setting1_repulse_beta30",
        r"""deepspeed --master_port 36191 --module openrlhf.cli.train_ppo --pretrain HuggingFaceTB/SmolLM-135M-Instruct --reward_pretrain OpenAssistant/reward-model-deberta-v3-large-v2 --save_path /mfs1/u/stephenzhao/OpenRLHF/checkpoint/rlhfmultilen20kl2 --ckpt_path /mfs1/u/stephenzhao/OpenRLHF/checkpoint/rlhfmultilen20kl2 --save_steps -1 --save_steps_harmless 100 --max_ckpt_num 1 --logging_steps 1 --eval_steps -1 --micro_train_batch_size 250 --train_batch_size 250 --micro_rollout_batch_size 50 --rollout_batch_size 50 --duplicate_rollout_batch_by 5 --max_epochs 1 --prompt_max_len 1024 --generate_max_len 20 --zero_stage 2 --prompt_data Silent-Zebra/20k_mixed_singleturn_1 --input_key prompt --apply_chat_template --max_samples 100000 --gradient_checkpointing --num_episodes 1 --do_harmlessness_training --harmlessness_training_num_episodes 2 --target_dist_beta -30 --save_info_path /h/319/stephenzhao/OpenRLHF/info/rlhfmultilen20kl2 --lr_scheduler constant --adam_betas 0.9 0.999 --n_samples_per_prompt 1 --rm_type rlhf --seed 1 --parameterization policy_psi_q_p_s_t --actor_loss_type ctl --actor_learning_rate 1e-5 --critic_learning_rate 0 --base_actor_learning_rate 3e-5 --harmlessness_training_loss_type neg_training --reinforce_baseline_type expectation --alpha 0.1 --init_kl_coef 0.2 --save_negdata --save_negdata_threshold -5 --evaluate_heldout_sampling --sampling_iters 1 --heldout_prompt_data Silent-Zebra/10k_mixed_singleturn_2_1 --heldout_input_key prompt --rm_max_len 300""",
        "rl",
        "repulse-readme.md:206",
        "Setting 1: RePULSe (beta 30)",
    ),
    SeedCommand(
        "setting2_ppo",
        r"""deepspeed --master_port 38711 --module openrlhf.cli.train_ppo --pretrain meta-llama/Llama-3.2-1B-Instruct --bf16 --reward_pretrain Skywork/Skywork-Reward-V2-Llama-3.2-1B --save_path /scratch/zhaostep/OpenRLHF/checkpoint/rlhfmultikl20 --ckpt_path /scratch/zhaostep/OpenRLHF/checkpoint/rlhfmultikl20 --save_steps 100 --max_ckpt_num 1 --logging_steps 1 --eval_steps -1 --micro_train_batch_size 20 --train_batch_size 80 --micro_rollout_batch_size 5 --rollout_batch_size 20 --duplicate_rollout_batch_by 4 --max_epochs 1 --prompt_max_len 1024 --generate_max_len 100 --zero_stage 2 --prompt_data Silent-Zebra/20k_mixed_singleturn_1 --input_key prompt --apply_chat_template --max_samples 100000 --gradient_checkpointing --num_episodes 4 --init_kl_coef 2 --save_info_path /scratch/zhaostep/OpenRLHF/info/rlhfmultikl20 --lr_scheduler constant --adam_betas 0.9 0.999 --n_samples_per_prompt 1 --rm_type rlhf --seed 1 --parameterization policy --actor_loss_type ppo --actor_learning_rate 3e-7 --critic_learning_rate 3e-6 --save_negdata --save_negdata_threshold -5 --evaluate_heldout_sampling --sampling_iters 1 --heldout_prompt_data Silent-Zebra/10k_mixed_singleturn_2_1 --heldout_input_key prompt""",
        "rl",
        "repulse-readme.md:214",
        "Setting 2 (Llama-3.2-1B): PPO",
    ),
    SeedCommand(
        "setting2_reinforce",
        r"""deepspeed --master_port 30441 --module openrlhf.cli.train_ppo --pretrain meta-llama/Llama-3.2-1B-Instruct --bf16 --reward_pretrain Skywork/Skywork-Reward-V2-Llama-3.2-1B --save_path /scratch/zhaostep/OpenRLHF/checkpoint/rlhfmultikl20 --ckpt_path /scratch/zhaostep/OpenRLHF/checkpoint/rlhfmultikl20 --save_steps -1 --save_steps_harmless 100 --max_ckpt_num 1 --logging_steps 1 --eval_steps -1 --micro_train_batch_size 20 --train_batch_size 80 --micro_rollout_batch_size 5 --rollout_batch_size 20 --duplicate_rollout_batch_by 4 --max_epochs 1 --prompt_max_len 1024 --generate_max_len 100 --zero_stage 2 --prompt_data Silent-Zebra/20k_mixed_singleturn_1 --input_key prompt --apply_chat_template --max_samples 100000 --gradient_checkpointing --num_episodes 1 --do_harmlessness_training --harmlessness_training_num_episodes 4 --target_dist_beta 0 --save_info_path /scratch/zhaostep/OpenRLHF/info/rlhfmultikl20 --lr_scheduler constant --adam_betas 0.9 0.999 --n_samples_per_prompt 1 --rm_type rlhf --seed 1 --parameterization policy_psi_q_p_s_t --actor_loss_type ctl --actor_learning_rate 0 --critic_learning_rate 0 --base_actor_learning_rate 1e-7 --harmlessness_training_loss_type reinforce --reinforce_baseline_type expectation --init_kl_coef 2 --alpha 0 --evaluate_heldout_sampling --sampling_iters 1 --heldout_prompt_data Silent-Zebra/10k_mixed_singleturn_2_1 --heldout_input_key prompt""",
        "rl",
        "repulse-readme.md:221",
        "Setting 2: REINFORCE",
    ),
    SeedCommand(
        "setting2_transform_b0p3_a3_lr1e-7",
        r"""deepspeed --master_port 33251 --module openrlhf.cli.train_ppo --pretrain meta-llama/Llama-3.2-1B-Instruct --bf16 --reward_pretrain Skywork/Skywork-Reward-V2-Llama-3.2-1B --save_path /scratch/zhaostep/OpenRLHF/checkpoint/rlhfmultikl20v2 --ckpt_path /scratch/zhaostep/OpenRLHF/checkpoint/rlhfmultikl20v2 --save_steps -1 --save_steps_harmless 100 --max_ckpt_num 1 --logging_steps 1 --eval_steps -1 --micro_train_batch_size 20 --train_batch_size 80 --micro_rollout_batch_size 5 --rollout_batch_size 20 --duplicate_rollout_batch_by 4 --max_epochs 1 --prompt_max_len 1024 --generate_max_len 100 --zero_stage 2 --prompt_data Silent-Zebra/20k_mixed_singleturn_1 --input_key prompt --apply_chat_template --max_samples 100000 --gradient_checkpointing --num_episodes 1 --do_harmlessness_training --harmlessness_training_num_episodes 4 --target_dist_beta -0.3 --save_info_path /scratch/zhaostep/OpenRLHF/info/rlhfmultikl20v2 --lr_scheduler constant --adam_betas 0.9 0.999 --n_samples_per_prompt 1 --rm_type rlhf --seed 1 --parameterization policy_psi_q_p_s_t --actor_loss_type ctl --actor_learning_rate 0 --critic_learning_rate 0 --base_actor_learning_rate 1e-7 --harmlessness_training_loss_type reinforce --reinforce_baseline_type expectation --init_kl_coef 2 --alpha 3 --evaluate_heldout_sampling --sampling_iters 1 --heldout_prompt_data Silent-Zebra/10k_mixed_singleturn_2_1 --heldout_input_key prompt --reward_transform minus_alpha_exp_beta_r""",
        "rl",
        "repulse-readme.md:227",
        "Setting 2: reward transformation (beta 0.3, alpha 3, lr 1e-7)",
    ),
    SeedCommand(
        "setting2_transform_b1_a1_lr1e-7",
        r"""deepspeed --master_port 37401 --module openrlhf.cli.train_ppo --pretrain meta-llama/Llama-3.2-1B-Instruct --bf16 --reward_pretrain Skywork/Skywork-Reward-V2-Llama-3.2-1B --save_path /scratch/zhaostep/OpenRLHF/checkpoint/rlhfmultikl20 --ckpt_path /scratch/zhaostep/OpenRLHF/checkpoint/rlhfmultikl20 --save_steps -1 --save_steps_harmless 100 --max_ckpt_num 1 --logging_steps 1 --eval_steps -1 --micro_train_batch_size 20 --train_batch_size 80 --micro_rollout_batch_size 5 --rollout_batch_size 20 --duplicate_rollout_batch_by 4 --max_epochs 1 --prompt_max_len 1024 --generate_max_len 100 --zero_stage 2 --prompt_data Silent-Zebra/20k_mixed_singleturn_1 --input_key prompt --apply_chat_template --max_samples 100000 --gradient_checkpointing --num_episodes 1 --do_harmlessness_training --harmlessness_training_num_episodes 4 --target_dist_beta -1 --save_info_path /scratch/zhaostep/OpenRLHF/info/rlhfmultikl20 --lr_scheduler constant --adam_betas 0.9 0.999 --n_samples_per_prompt 1 --rm_type rlhf --seed 1 --parameterization policy_psi_q_p_s_t --actor_loss_type ctl --actor_learning_rate 0 --critic_learning_rate 0 --base_actor_learning_rate 1e-7 --harmlessness_training_loss_type reinforce --reinforce_baseline_type expectation --init_kl_coef 2 --alpha 1 --evaluate_heldout_sampling --sampling_iters 1 --heldout_prompt_data Silent-Zebra/10k_mixed_singleturn_2_1 --heldout_input_key prompt --reward_transform minus_alpha_exp_beta_r""",
        "rl",
        "repulse-readme.md:230",
        "Setting 2: reward transformation (beta 1, alpha 1, lr 1e-7)",
    ),
    SeedCommand(
        "setting2_transform_b0p3_a3_lr3e-7",
        r"""deepspeed --master_port 39601 --module openrlhf.cli.train_ppo --pretrain meta-llama/Llama-3.2-1B-Instruct --bf16 --reward_pretrain Skywork/Skywork-Reward-V2-Llama-3.2-1B --save_path /scratch/zhaostep/OpenRLHF/checkpoint/rlhfmultikl20 --ckpt_path /scratch/zhaostep/OpenRLHF/checkpoint/rlhfmultikl20 --save_steps -1 --save_steps_harmless 100 --max_ckpt_num 1 --logging_steps 1 --eval_steps -1 --micro_train_batch_size 20 --train_batch_size 80 --micro_rollout_batch_size 5 --rollout_batch_size 20 --duplicate_rollout_batch_by 4 --max_epochs 1 --prompt_max_len 1024 --generate_max_len 100 --zero_stage 2 --prompt_data Silent-Zebra/20k_mixed_singleturn_1 --input_key prompt --apply_chat_template --max_samples 100000 --gradient_checkpointing --num_episodes 1 --do_harmlessness_training --harmlessness_training_num_episodes 4 --target_dist_beta -0.3 --save_info_path /scratch/zhaostep/OpenRLHF/info/rlhfmultikl20 --lr_scheduler constant --adam_betas 0.9 0.999 --n_samples_per_prompt 1 --rm_type rlhf --seed 1 --parameterization policy_psi_q_p_s_t --actor_loss_type ctl --actor_learning_rate 0 --critic_learning_rate 0 --base_actor_learning_rate 3e-7 --harmlessness_training_loss_type reinforce --reinforce_baseline_type expectation --init_kl_coef 2 --alpha 3 --evaluate_heldout_sampling --sampling_iters 1 --heldout_prompt_data Silent-Zebra/10k_mixed_singleturn_2_1 --heldout_input_key prompt --reward_transform minus_alpha_exp_beta_r""",
        "rl",
        "repulse-readme.md:233",
        "Setting 2: reward transformation (beta 0.3, alpha 3, lr 3e-7)",
    ),
    SeedCommand(
        "setting2_transform_b1_a1_lr3e-7",
        r"""deepspeed --master_port 38111 --module openrlhf.cli.train_ppo --pretrain meta-llama/Llama-3.2-1B-Instruct --bf16 --reward_pretrain Skywork/Skywork-Reward-V2-Llama-3.2-1B --save_path /scratch/zhaostep/OpenRLHF/checkpoint/rlhfmultikl20 --ckpt_path /scratch/zhaostep/OpenRLHF/checkpoint/rlhfmultikl20 --save_steps -1 --save_steps_harmless 100 --max_ckpt_num 1 --logging_steps 1 --eval_steps -1 --micro_train_batch_size 20 --train_batch_size 80 --micro_rollout_batch_size 5 --rollout_batch_size 20 --duplicate_rollout_batch_by 4 --max_epochs 1 --prompt_max_len 1024 --generate_max_len 100 --zero_stage 2 --prompt_data Silent-Zebra/20k_mixed_singleturn_1 --input_key prompt --apply_chat_template --max_samples 100000 --gradient_checkpointing --num_episodes 1 --do_harmlessness_training --harmlessness_training_num_episodes 4 --target_dist_beta -1 --save_info_path /scratch/zhaostep/OpenRLHF/info/rlhfmultikl20 --lr_scheduler constant --adam_betas 0.9 0.999 --n_samples_per_prompt 1 --rm_type rlhf --seed 1 --parameterization policy_psi_q_p_s_t --actor_loss_type ctl --actor_learning_rate 0 --critic_learning_rate 0 --base_actor_learning_rate 3e-7 --harmlessness_training_loss_type reinforce --reinforce_baseline_type expectation --init_kl_coef 2 --alpha 1 --evaluate_heldout_sampling --sampling_iters 1 --heldout_prompt_data Silent-Zebra/10k_mixed_singleturn_2_1 --heldout_input_key prompt --reward_transform minus_alpha_exp_beta_r""",
        "rl",
        "repulse-readme.md:236",
        "Setting 2: reward transformation (beta 1, alpha 1, lr 3e-7)",
    ),
    SeedCommand(
        "setting2_p_proposal_a0p1",
        r"""deepspeed --master_port 34701 --module openrlhf.cli.train_ppo --pretrain meta-llama/Llama-3.2-1B-Instruct --bf16 --reward_pretrain Skywork/Skywork-Reward-V2-Llama-3.2-1B --save_path /scratch/zhaostep/OpenRLHF/checkpoint/rlhfmultikl20 --ckpt_path /scratch/zhaostep/OpenRLHF/checkpoint/rlhfmultikl20 --save_steps -1 --save_steps_harmless 100 --max_ckpt_num 1 --logging_steps 1 --eval_steps -1 --micro_train_batch_size 20 --train_batch_size 80 --micro_rollout_batch_size 5 --rollout_batch_size 20 --duplicate_rollout_batch_by 4 --max_epochs 1 --prompt_max_len 1024 --generate_max_len 100 --zero_stage 2 --prompt_data Silent-Zebra/20k_mixed_singleturn_1 --input_key prompt --apply_chat_template --max_samples 100000 --gradient_checkpointing --num_episodes 1 --do_harmlessness_training --harmlessness_training_num_episodes 4 --target_dist_beta -10 --save_info_path /scratch/zhaostep/OpenRLHF/info/rlhfmultikl20 --lr_scheduler constant --adam_betas 0.9 0.999 --n_samples_per_prompt 1 --rm_type rlhf --seed 1 --parameterization policy_psi_q_p_s_t --actor_loss_type ctl --actor_learning_rate 0 --critic_learning_rate 0 --base_actor_learning_rate 3e-7 --harmlessness_training_loss_type neg_training --reinforce_baseline_type expectation --alpha 0.1 --init_kl_coef 2 --evaluate_heldout_sampling --sampling_iters 1 --heldout_prompt_data Silent-Zebra/10k_mixed_singleturn_2_1 --heldout_input_key prompt --use_base_as_proposal""",
        "rl",
        "repulse-readme.md:242",
        "Setting 2: Base model proposal (alpha 0.1)",
    ),
    SeedCommand(
        "setting2_p_proposal_a1",
        r"""deepspeed --master_port 34341 --module openrlhf.cli.train_ppo --pretrain meta-llama/Llama-3.2-1B-Instruct --bf16 --reward_pretrain Skywork/Skywork-Reward-V2-Llama-3.2-1B --save_path /scratch/zhaostep/OpenRLHF/checkpoint/rlhfmultikl20 --ckpt_path /scratch/zhaostep/OpenRLHF/checkpoint/rlhfmultikl20 --save_steps -1 --save_steps_harmless 100 --max_ckpt_num 1 --logging_steps 1 --eval_steps -1 --micro_train_batch_size 20 --train_batch_size 80 --micro_rollout_batch_size 5 --rollout_batch_size 20 --duplicate_rollout_batch_by 4 --max_epochs 1 --prompt_max_len 1024 --generate_max_len 100 --zero_stage 2 --prompt_data Silent-Zebra/20k_mixed_singleturn_1 --input_key prompt --apply_chat_template --max_samples 100000 --gradient_checkpointing --num_episodes 1 --do_harmlessness_training --harmlessness_training_num_episodes 4 --target_dist_beta -10 --save_info_path /scratch/zhaostep/OpenRLHF/info/rlhfmultikl20 --lr_scheduler constant --adam_betas 0.9 0.999 --n_samples_per_prompt 1 --rm_type rlhf --seed 1 --parameterization policy_psi_q_p_s_t --actor_loss_type ctl --actor_learning_rate 0 --critic_learning_rate 0 --base_actor_learning_rate 1e-7 --harmlessness_training_loss_type neg_training --reinforce_baseline_type expectation --alpha 1 --init_kl_coef 2 --evaluate_heldout_sampling --sampling_iters 1 --heldout_prompt_data Silent-Zebra/10k_mixed_singleturn_2_1 --heldout_input_key prompt --use_base_as_proposal""",
        "rl",
        "repulse-readme.md:245",
        "Setting 2: Base model proposal (alpha 1)",
    ),
    SeedCommand(
        "setting2_repulse_a0p1",
        r"""deepspeed --master_port 39691 --module openrlhf.cli.train_ppo --pretrain meta-llama/Llama-3.2-1B-Instruct --bf16 --reward_pretrain Skywork/Skywork-Reward-V2-Llama-3.2-1B --save_path /scratch/zhaostep/OpenRLHF/checkpoint/rlhfmultikl20 --ckpt_path /scratch/zhaostep/OpenRLHF/checkpoint/rlhfmultikl20 --save_steps -1 --save_steps_harmless 100 --max_ckpt_num 1 --logging_steps 1 --eval_steps -1 --micro_train_batch_size 20 --train_batch_size 80 --micro_rollout_batch_size 5 --rollout_batch_size 20 --duplicate_rollout_batch_by 4 --max_epochs 1 --prompt_max_len 1024 --generate_max_len 100 --zero_stage 2 --prompt_data Silent-Zebra/20k_mixed_singleturn_1 --input_key prompt --apply_chat_template --max_samples 100000 --gradient_checkpointing --num_episodes 1 --do_harmlessness_training --harmlessness_training_num_episodes 2 --target_dist_beta -5 --save_info_path /scratch/zhaostep/OpenRLHF/info/rlhfmultikl20 --lr_scheduler constant --adam_betas 0.9 0.999 --n_samples_per_prompt 1 --rm_type rlhf --seed 1 --parameterization policy_psi_q_p_s_t --actor_loss_type ctl --actor_learning_rate 3e-7 --critic_learning_rate 0 --base_actor_learning_rate 3e-7 --harmlessness_training_loss_type neg_training --reinforce_baseline_type expectation --alpha 0.1 --init_kl_coef 2 --evaluate_heldout_sampling --sampling_iters 1 --heldout_prompt_data Silent-Zebra/10k_mixed_singleturn_2_1 --heldout_input_key prompt""",
        "rl",
        "repulse-readme.md:251",
        "Setting 2: RePULSe (alpha 0.1)",
    ),
    SeedCommand(
        "setting2_repulse_a0p2",
        r"""deepspeed --master_port 37051 --module openrlhf.cli.train_ppo --pretrain meta-llama/Llama-3.2-1B-Instruct --bf16 --reward_pretrain Skywork/Skywork-Reward-V2-Llama-3.2-1B --save_path /scratch/zhaostep/OpenRLHF/checkpoint/rlhfmultikl20 --ckpt_path /scratch/zhaostep/OpenRLHF/checkpoint/rlhfmultikl20 --save_steps -1 --save_steps_harmless 100 --max_ckpt_num 1 --logging_steps 1 --eval_steps -1 --micro_train_batch_size 20 --train_batch_size 80 --micro_rollout_batch_size 5 --rollout_batch_size 20 --duplicate_rollout_batch_by 4 --max_epochs 1 --prompt_max_len 1024 --generate_max_len 100 --zero_stage 2 --prompt_data Silent-Zebra/20k_mixed_singleturn_1 --input_key prompt --apply_chat_template --max_samples 100000 --gradient_checkpointing --num_episodes 1 --do_harmlessness_training --harmlessness_training_num_episodes 2 --target_dist_beta -5 --save_info_path /scratch/zhaostep/OpenRLHF/info/rlhfmultikl20 --lr_scheduler constant --adam_betas 0.9 0.999 --n_samples_per_prompt 1 --rm_type rlhf --seed 1 --parameterization policy_psi_q_p_s_t --actor_loss_type ctl --actor_learning_rate 3e-7 --critic_learning_rate 0 --base_actor_learning_rate 3e-7 --harmlessness_training_loss_type neg_training --reinforce_baseline_type expectation --alpha 0.2 --init_kl_coef 2 --evaluate_heldout_sampling --sampling_iters 1 --heldout_prompt_data Silent-Zebra/10k_mixed_singleturn_2_1 --heldout_input_key prompt""",
        "rl",
        "repulse-readme.md:254",
        "Setting 2: RePULSe (alpha 0.2)",
    ),
    SeedCommand(
        "gcg_eval",
        r"""deepspeed --master_port 32061 --module openrlhf.cli.evaluate_gcg_sz     --pretrain "HuggingFaceTB/SmolLM-135M-Instruct"     --ckpt_path /mfs1/u/stephenzhao/OpenRLHF/checkpoint/rlhfmultilen20kl2/rlhf_Sm13In_remodev3lav2_20misi1_len20_kl0.2_beta-30.0_harml_neg_training_a0.1_policy_psi_q_p_s_t_ctl_epo1_epi2_schconstant_alr1e-05_blr3e-05_policy_psi_q_p_s_t_s1_harml_actor     --file_path data/harmful_behaviors_custom.csv     --atk_success_criteria reward     --reward_pretrain "OpenAssistant/reward-model-deberta-v3-large-v2"     --reward_threshold -4.0     --rm_exclude_adv_suffix          --zero_stage 2     --gradient_checkpointing          --parameterization policy     --max_targets 100     --max_new_tokens 20     --scenario behaviors     --gcg_steps 250     --gcg_search_width 512     --gcg_topk 256     --gcg_batch_size 512     --gcg_n_replace 1     --gcg_buffer_size 0     --gcg_use_prefix_cache     --gcg_filter_ids""",
        "gcg",
        "repulse-readme.md:261",
        "Example GCG Evaluation Command",
    ),
    SeedCommand(
        "readme_sft",
        r"""deepspeed --module openrlhf.cli.train_sft \
   --max_len 4096 \
   --dataset Open-Orca/OpenOrca \
   --input_key question \
   --output_key response \
   --input_template $'User: {}\nAssistant: ' \
   --train_batch_size 256 \
   --micro_train_batch_size 2 \
   --max_samples 500000 \
   --pretrain meta-llama/Meta-Llama-3-8B \
   --save_path ./checkpoint/llama3-8b-sft \
   --save_steps -1 \
   --logging_steps 1 \
   --eval_steps -1 \
   --zero_stage 2 \
   --max_epochs 1 \
   --packing_samples \
   --bf16 \
   --flash_attn \
   --learning_rate 5e-6 \
   --gradient_checkpointing \
   --use_wandb {wandb_token}""",
        "sft",
        "repulse-readme.md:475",
        "README: Supervised Fine-tuning",
    ),
    SeedCommand(
        "readme_rm",
        r"""deepspeed --module openrlhf.cli.train_rm \
   --save_path ./checkpoint/llama3-8b-rm \
   --save_steps -1 \
   --logging_steps 1 \
   --eval_steps -1 \
   --train_batch_size 256 \
   --micro_train_batch_size 1 \
   --pretrain OpenRLHF/Llama-3-8b-sft-mixture \
   --bf16 \
   --max_epochs 1 \
   --max_len 8192 \
   --zero_stage 3 \
   --learning_rate 9e-6 \
   --dataset OpenRLHF/preference_dataset_mixture2_and_safe_pku \
   --apply_chat_template \
   --chosen_key chosen \
   --rejected_key rejected \
   --flash_attn \
   --packing_samples \
   --gradient_checkpointing \
   --use_wandb {wandb_token}""",
        "rm",
        "repulse-readme.md:520",
        "README: Reward Model Training",
    ),
    SeedCommand(
        "readme_ppo_ray",
        r"""ray job submit --address="http://127.0.0.1:8265" \
   --runtime-env-json='{"working_dir": "/openrlhf"}' \
   -- python3 -m openrlhf.cli.train_ppo_ray \
   --ref_num_nodes 1 \
   --ref_num_gpus_per_node 8 \
   --reward_num_nodes 1 \
   --reward_num_gpus_per_node 8 \
   --critic_num_nodes 1 \
   --critic_num_gpus_per_node 8 \
   --actor_num_nodes 1 \
   --actor_num_gpus_per_node 8 \
   --vllm_num_engines 4 \
   --vllm_tensor_parallel_size 2 \
   --colocate_all_models \
   --vllm_gpu_memory_utilization 0.5 \
   --pretrain OpenRLHF/Llama-3-8b-sft-mixture \
   --reward_pretrain OpenRLHF/Llama-3-8b-rm-700k \
   --save_path /openrlhf/examples/test_scripts/final/llama3-8b-rlhf \
   --ckpt_path /openrlhf/examples/test_scripts/ckpt/llama3-8b-rlhf \
   --save_hf_ckpt \
   --micro_train_batch_size 8 \
   --train_batch_size 128 \
   --micro_rollout_batch_size 16 \
   --rollout_batch_size 1024 \
   --n_samples_per_prompt 1 \
   --max_epochs 1 \
   --prompt_max_len 1024 \
   --max_samples 100000 \
   --generate_max_len 1024 \
   --zero_stage 3 \
   --bf16 \
   --actor_learning_rate 5e-7 \
   --critic_learning_rate 9e-6 \
   --init_kl_coef 0.01 \
   --prompt_data OpenRLHF/prompt-collection-v0.1 \
   --input_key context_messages \
   --apply_chat_template \
   --normalize_reward \
   --gradient_checkpointing \
   --packing_samples \
   --vllm_sync_backend nccl \
   --enforce_eager \
   --vllm_enable_sleep \
   --deepspeed_enable_sleep
   --use_wandb {wandb_token}""",
        "rl",
        "repulse-readme.md:570",
        "README: PPO/REINFORCE++ with Ray and vLLM",
    ),
    SeedCommand(
        "readme_reward_func",
        r"""ray job submit --address="http://127.0.0.1:8265" \
  --runtime-env-json='{"working_dir": "/openrlhf"}' \
  -- python3 -m openrlhf.cli.train_ppo_ray \
  ...
  --remote_rm_url /path/to/reward_func.py \
  --label_key answer""",
        "rl",
        "repulse-readme.md:666",
        "README: Reinforced Fine-tuning (fragment; '...' elides flags)",
    ),
]

# Flags the seed documents mention outside complete commands (option lists, "# --flag"
# comments), with an example value: (our command, argv).
SEED_OPTION_FLAGS: list[tuple[str, list[str]]] = [
    ("sft", ["--apply_chat_template", "--tokenizer_chat_template", "{{ messages }}"]),
    ("sft", ["--ring_attn_size", "2", "--ring_head_stride", "2"]),
    ("sft", ["--multiturn", "--apply_chat_template"]),
    ("sft", ["--pretrain_mode"]),
    (
        "sft",
        [
            "--l2",
            "0.0",
            "--lr_scheduler",
            "cosine_with_min_lr",
            "--max_norm",
            "1.0",
            "--lr_warmup_ratio",
            "0.03",
        ],
    ),
    (
        "sft",
        [
            "--aux_loss_coef",
            "0.01",
            "--max_epoch",
            "1",
            "--use_liger_kernel",
            "--ds_tensor_parallel_size",
            "1",
        ],
    ),
    ("sft", ["--dataset_probs", "0.5,0.5", "--eval_dataset", "toy_assets/sft.jsonl", "--overlap_comm"]),
    (
        "sft",
        [
            "--load_in_4bit",
            "--lora_rank",
            "64",
            "--lora_dropout",
            "0.05",
            "--target_modules",
            "q_proj",
            "v_proj",
        ],
    ),
    ("sft", ["--use_tensorboard", "runs/tb", "--adam_betas", "0.9", "0.95", "--adam_offload"]),
    (
        "sft",
        [
            "--data.tokenizer_chat_template",
            "{{ messages }}",
            "--data.multiturn",
            "--model.pretrain_mode_enable",
        ],
    ),
    ("sft", ["--ds.ring_attn_size", "2", "--ds.ring_attn_head_stride", "2", "--model.aux_loss_coef", "0.01"]),
    ("sft", ["--ds.lora.rank", "64", "--ds.lora.alpha", "64", "--ds.load_in_4bit", "--muon.no_nesterov"]),
    ("rm", ["--value_head_prefix", "score", "--loss", "logexp", "--margin_loss", "--compute_fp32_loss"]),
    ("rm", ["--value_prefix_head", "score"]),
    ("rm", ["--ds.value_head_prefix", "score", "--model.loss_type", "sigmoid", "--model.margin_loss_enable"]),
    ("rm", ["--model.compute_fp32_loss_enable"]),
    (
        "dpo",
        ["--ref_offload", "--beta", "0.1", "--ipo", "--label_smoothing", "0.1", "--nll_loss_coef", "0.1"],
    ),
    ("dpo", ["--packing_samples", "--model.ipo_enable", "--model.label_smoothing", "0.1", "--ref.offload"]),
    ("dpo", ["--model.nll_loss_coef", "0.1", "--min_lr_ratio", "0.1"]),
    ("kto", ["--ref_offload", "--apply_chat_template"]),
    ("kd", ["--teacher_offload", "--kd_coef", "0.4"]),
    ("prm", ["--placeholder_token", "ки", "--reward_tokens", "+", "-"]),
    ("rl", ["--advantage_estimator", "reinforce"]),
    ("rl", ["--advantage_estimator", "rloo", "--n_samples_per_prompt", "4"]),
    ("rl", ["--advantage_estimator", "reinforce_baseline", "--n_samples_per_prompt", "4"]),
    ("rl", ["--advantage_estimator", "group_norm", "--use_kl_loss", "--kl_estimator", "k3"]),
    ("rl", ["--advantage_estimator", "dr_grpo", "--n_samples_per_prompt", "4"]),
    ("rl", ["--init_kl_coef", "0"]),
    ("rl", ["--remote_rm_url", "http://localhost:5000/get_reward"]),
    (
        "rl",
        ["--ref_reward_offload", "--vllm_sync_with_ray", "--enable_prefix_caching", "--save_value_network"],
    ),
    ("rl", ["--value_head_prefix", "score"]),
    (
        "rl",
        [
            "--eval_n_samples_per_prompt",
            "4",
            "--freezing_actor_steps",
            "5",
            "--reward_clip_range",
            "-10",
            "10",
        ],
    ),
    ("rl", ["--temperature", "1.0", "--eval_temperature", "0.6", "--gamma", "1.0", "--lambd", "1.0"]),
    ("rl", ["--no_advantage_std_norm", "--entropy_loss_coef", "0.01", "--prompt_data_probs", "0.5,0.5"]),
    (
        "rl",
        [
            "--eval_dataset",
            "toy_assets/prompts.jsonl",
            "--dynamic_filtering",
            "--dynamic_filtering_reward_range",
            "0",
            "1",
        ],
    ),
    (
        "rl",
        [
            "--colocate_critic_reward",
            "--colocate_actor_ref",
            "--enforce_eager",
            "--vllm_sync_backend",
            "gloo",
        ],
    ),
    (
        "rl",
        [
            "--reward_pretrain",
            "toy_assets/rm,toy_assets/rm",
            "--overlap_comm",
            "--vllm_gpu_memory_utilization",
            "0.5",
        ],
    ),
    ("rl", ["--max_norm", "1.0", "--l2", "0.0", "--lr_warmup_ratio", "0.03", "--aux_loss_coef", "0.01"]),
]

# Every flag of the 0.10.2 CLIs (spec openrlhf.md §2.3) -> the CLIs that have it.
FLAGS_0102: dict[str, tuple[str, ...]] = {
    "--model.aux_loss_coef": ("sft", "rm", "dpo"),
    "--model.beta": ("dpo",),
    "--model.compute_fp32_loss_enable": ("rm",),
    "--model.gradient_checkpointing_enable": ("sft", "rm", "dpo"),
    "--model.gradient_checkpointing_reentrant": ("sft", "rm", "dpo"),
    "--model.ipo_enable": ("dpo",),
    "--model.label_smoothing": ("dpo",),
    "--model.loss_type": ("rm",),
    "--model.margin_loss_enable": ("rm",),
    "--model.model_name_or_path": ("sft", "rm", "dpo"),
    "--model.nll_loss_coef": ("dpo",),
    "--model.pretrain_mode_enable": ("sft",),
    "--actor.adam.betas": ("rl",),
    "--actor.adam.eps": ("rl",),
    "--actor.adam.lr": ("rl",),
    "--actor.adam.weight_decay": ("rl",),
    "--actor.aux_loss_coef": ("rl",),
    "--actor.dual_clip": ("rl",),
    "--actor.entropy_coef": ("rl",),
    "--actor.eps_clip": ("rl",),
    "--actor.eps_clip_low_high": ("rl",),
    "--actor.freeze_visual_encoder": ("rl",),
    "--actor.gradient_checkpointing_enable": ("rl",),
    "--actor.gradient_checkpointing_reentrant": ("rl",),
    "--actor.lr_scheduler": ("rl",),
    "--actor.lr_warmup_ratio": ("rl",),
    "--actor.max_norm": ("rl",),
    "--actor.min_lr_ratio": ("rl",),
    "--actor.model_name_or_path": ("rl",),
    "--actor.muon.lr": ("rl",),
    "--actor.muon.momentum": ("rl",),
    "--actor.muon.nesterov": ("rl",),
    "--actor.muon.no_nesterov": ("rl",),
    "--actor.muon.ns_steps": ("rl",),
    "--actor.num_gpus_per_node": ("rl",),
    "--actor.num_nodes": ("rl",),
    "--actor.optim": ("rl",),
    "--actor.policy_loss_type": ("rl",),
    "--critic.adam.betas": ("rl",),
    "--critic.adam.eps": ("rl",),
    "--critic.adam.lr": ("rl",),
    "--critic.adam.weight_decay": ("rl",),
    "--critic.freezing_steps": ("rl",),
    "--critic.lr_scheduler": ("rl",),
    "--critic.lr_warmup_ratio": ("rl",),
    "--critic.max_norm": ("rl",),
    "--critic.min_lr_ratio": ("rl",),
    "--critic.model_name_or_path": ("rl",),
    "--critic.muon.lr": ("rl",),
    "--critic.muon.momentum": ("rl",),
    "--critic.muon.nesterov": ("rl",),
    "--critic.muon.no_nesterov": ("rl",),
    "--critic.muon.ns_steps": ("rl",),
    "--critic.num_gpus_per_node": ("rl",),
    "--critic.num_nodes": ("rl",),
    "--critic.optim": ("rl",),
    "--critic.save_value_network": ("rl",),
    "--critic.value_clip": ("rl",),
    "--ref.model_name_or_path": ("dpo",),
    "--ref.num_gpus_per_node": ("rl",),
    "--ref.num_nodes": ("rl",),
    "--ref.offload": ("dpo", "rl"),
    "--reward.clip_range": ("rl",),
    "--reward.model_name_or_path": ("rl",),
    "--reward.normalize_enable": ("rl",),
    "--reward.num_gpus_per_node": ("rl",),
    "--reward.num_nodes": ("rl",),
    "--reward.offload": ("rl",),
    "--reward.overlong_buffer_len": ("rl",),
    "--reward.overlong_penalty_factor": ("rl",),
    "--reward.remote_url": ("rl",),
    "--reward.stop_properly_penalty_coef": ("rl",),
    "--data.apply_chat_template": ("sft", "rm", "dpo", "rl"),
    "--data.chosen_key": ("rm", "dpo"),
    "--data.dataloader_num_workers": ("sft", "rm", "dpo", "rl"),
    "--data.dataset": ("sft", "rm", "dpo"),
    "--data.dataset_probs": ("sft", "rm", "dpo"),
    "--data.dataset_split": ("sft", "rm", "dpo"),
    "--data.disable_fast_tokenizer": ("sft", "rm", "dpo", "rl"),
    "--data.image_key": ("rl",),
    "--data.input_key": ("sft", "rl"),
    "--data.input_template": ("sft", "rm", "dpo", "rl"),
    "--data.label_key": ("rl",),
    "--data.max_images_per_prompt": ("rl",),
    "--data.max_len": ("sft", "rm", "dpo", "rl"),
    "--data.max_samples": ("sft", "rm", "dpo", "rl"),
    "--data.multiturn": ("sft",),
    "--data.output_key": ("sft",),
    "--data.prompt_dataset": ("rl",),
    "--data.prompt_key": ("rm", "dpo"),
    "--data.prompt_probs": ("rl",),
    "--data.prompt_split": ("rl",),
    "--data.rejected_key": ("rm", "dpo"),
    "--data.tokenizer_chat_template": ("sft", "rm", "dpo"),
    "--rollout.batch_size": ("rl",),
    "--rollout.max_new_tokens": ("rl",),
    "--rollout.max_tokens_per_gpu": ("rl",),
    "--rollout.micro_batch_size": ("rl",),
    "--rollout.n_samples_per_prompt": ("rl",),
    "--rollout.temperature": ("rl",),
    "--rollout.top_p": ("rl",),
    "--rollout.vllm_generate_batch_size": ("rl",),
    "--train.agent_func_path": ("rl",),
    "--train.async_enable": ("rl",),
    "--train.async_queue_size": ("rl",),
    "--train.batch_size": ("sft", "rm", "dpo", "rl"),
    "--train.colocate_actor_ref": ("rl",),
    "--train.colocate_all": ("rl",),
    "--train.colocate_critic_reward": ("rl",),
    "--train.dynamic_batch_enable": ("rl",),
    "--train.ema_beta": ("rl",),
    "--train.enable_ema": ("rl",),
    "--train.full_determinism_enable": ("sft", "rm", "dpo", "rl"),
    "--train.max_epochs": ("sft", "rm", "dpo", "rl"),
    "--train.max_tokens_per_gpu": ("rl",),
    "--train.micro_batch_size": ("sft", "rm", "dpo", "rl"),
    "--train.num_episodes": ("rl",),
    "--train.partial_rollout_enable": ("rl",),
    "--train.seed": ("sft", "rm", "dpo", "rl"),
    "--vllm.enable_prefix_caching": ("rl",),
    "--vllm.enable_sleep": ("rl",),
    "--vllm.enforce_eager": ("rl",),
    "--vllm.gpu_memory_utilization": ("rl",),
    "--vllm.num_engines": ("rl",),
    "--vllm.sync_backend": ("rl",),
    "--vllm.sync_with_ray": ("rl",),
    "--vllm.tensor_parallel_size": ("rl",),
    "--algo.advantage.estimator": ("rl",),
    "--algo.advantage.gamma": ("rl",),
    "--algo.advantage.is_correction_enable": ("rl",),
    "--algo.advantage.is_correction_threshold": ("rl",),
    "--algo.advantage.is_correction_type": ("rl",),
    "--algo.advantage.lambd": ("rl",),
    "--algo.advantage.no_std_norm": ("rl",),
    "--algo.dynamic_filtering_enable": ("rl",),
    "--algo.dynamic_filtering_range": ("rl",),
    "--algo.kl.estimator": ("rl",),
    "--algo.kl.horizon": ("rl",),
    "--algo.kl.init_coef": ("rl",),
    "--algo.kl.target": ("rl",),
    "--algo.kl.use_loss": ("rl",),
    "--ds.adam_offload": ("sft", "rm", "dpo", "rl"),
    "--ds.attn_implementation": ("sft", "rm", "dpo", "rl"),
    "--ds.deepcompile": ("sft", "rm", "dpo", "rl"),
    "--ds.enable_sleep": ("rl",),
    "--ds.experts_implementation": ("sft", "rm", "dpo", "rl"),
    "--ds.grad_accum_dtype": ("sft", "rm", "dpo", "rl"),
    "--ds.load_in_4bit": ("sft", "rm", "dpo", "rl"),
    "--ds.lora.alpha": ("sft", "rm", "dpo", "rl"),
    "--ds.lora.dropout": ("sft", "rm", "dpo", "rl"),
    "--ds.lora.rank": ("sft", "rm", "dpo", "rl"),
    "--ds.lora.target_modules": ("sft", "rm", "dpo", "rl"),
    "--ds.overlap_comm": ("sft", "rm", "dpo", "rl"),
    "--ds.packing_samples": ("sft", "rm", "dpo", "rl"),
    "--ds.param_dtype": ("sft", "rm", "dpo", "rl"),
    "--ds.ring_attn_head_stride": ("sft", "rm", "dpo", "rl"),
    "--ds.ring_attn_size": ("sft", "rm", "dpo", "rl"),
    "--ds.tensor_parallel_size": ("sft", "rm", "dpo", "rl"),
    "--ds.use_liger_kernel": ("sft", "dpo", "rl"),
    "--ds.use_universal_ckpt": ("sft", "rm", "dpo", "rl"),
    "--ds.value_head_prefix": ("rm", "rl"),
    "--ds.zero_stage": ("sft", "rm", "dpo", "rl"),
    "--ds.zpg": ("sft", "rm", "dpo", "rl"),
    "--adam.betas": ("sft", "rm", "dpo"),
    "--adam.eps": ("sft", "rm", "dpo"),
    "--adam.lr": ("sft", "rm", "dpo"),
    "--adam.weight_decay": ("sft", "rm", "dpo"),
    "--muon.lr": ("sft", "rm", "dpo"),
    "--muon.momentum": ("sft", "rm", "dpo"),
    "--muon.nesterov": ("sft", "rm", "dpo"),
    "--muon.no_nesterov": ("sft", "rm", "dpo"),
    "--muon.ns_steps": ("sft", "rm", "dpo"),
    "--ckpt.best_metric_key": ("rl",),
    "--ckpt.disable_ds": ("sft", "rm", "dpo", "rl"),
    "--ckpt.load_enable": ("sft", "rm", "dpo", "rl"),
    "--ckpt.max_mem": ("sft", "rm", "dpo", "rl"),
    "--ckpt.max_num": ("sft", "rm", "dpo", "rl"),
    "--ckpt.output_dir": ("sft", "rm", "dpo", "rl"),
    "--ckpt.path": ("sft", "rm", "dpo", "rl"),
    "--ckpt.save_hf": ("sft", "rm", "dpo", "rl"),
    "--ckpt.save_steps": ("sft", "rm", "dpo", "rl"),
    "--eval.dataset": ("sft", "rm", "dpo", "rl"),
    "--eval.n_samples_per_prompt": ("rl",),
    "--eval.split": ("sft", "rm", "dpo", "rl"),
    "--eval.steps": ("sft", "rm", "dpo", "rl"),
    "--eval.temperature": ("rl",),
    "--logger.logging_steps": ("sft", "rm", "dpo", "rl"),
    "--logger.tensorboard_dir": ("sft", "rm", "dpo", "rl"),
    "--logger.wandb.group": ("sft", "rm", "dpo", "rl"),
    "--logger.wandb.key": ("sft", "rm", "dpo", "rl"),
    "--logger.wandb.org": ("sft", "rm", "dpo", "rl"),
    "--logger.wandb.project": ("sft", "rm", "dpo", "rl"),
    "--logger.wandb.run_name": ("sft", "rm", "dpo", "rl"),
    "--local_rank": ("sft", "rm", "dpo", "rl"),
    "--lr_scheduler": ("sft", "rm", "dpo"),
    "--lr_warmup_ratio": ("sft", "rm", "dpo"),
    "--max_norm": ("sft", "rm", "dpo"),
    "--min_lr_ratio": ("sft", "rm", "dpo"),
    "--optim": ("sft", "rm", "dpo"),
    "--use_ms": ("sft", "rm", "dpo", "rl"),
}

# Every old flat flag of the migration table (spec openrlhf.md §2.4) -> the CLIs that had it.
MIGRATION_OLD_FLAGS: dict[str, tuple[str, ...]] = {
    "--save_path": ("sft", "rm", "dpo", "rl"),
    "--save_steps": ("sft", "rm", "dpo", "rl"),
    "--save_hf_ckpt": ("sft", "rm", "dpo", "rl"),
    "--disable_ds_ckpt": ("sft", "rm", "dpo", "rl"),
    "--logging_steps": ("sft", "rm", "dpo", "rl"),
    "--eval_steps": ("sft", "rm", "dpo", "rl"),
    "--ckpt_path": ("sft", "rm", "dpo", "rl"),
    "--max_ckpt_num": ("sft", "rm", "dpo", "rl"),
    "--max_ckpt_mem": ("sft", "rm", "dpo", "rl"),
    "--load_checkpoint": ("sft", "rm", "dpo", "rl"),
    "--use_ds_universal_ckpt": ("sft", "rm", "dpo", "rl"),
    "--micro_train_batch_size": ("sft", "rm", "dpo", "rl"),
    "--train_batch_size": ("sft", "rm", "dpo", "rl"),
    "--max_norm": ("sft", "rm", "dpo", "rl"),
    "--gradient_checkpointing": ("sft", "rm", "dpo", "rl"),
    "--deepcompile": ("sft", "rm", "dpo", "rl"),
    "--seed": ("sft", "rm", "dpo", "rl"),
    "--full_determinism": ("sft", "rm", "dpo", "rl"),
    "--local_rank": ("sft", "rm", "dpo", "rl"),
    "--zero_stage": ("sft", "rm", "dpo", "rl"),
    "--param_dtype": ("sft", "rm", "dpo", "rl"),
    "--zpg": ("sft", "rm", "dpo", "rl"),
    "--adam_offload": ("sft", "rm", "dpo", "rl"),
    "--attn_implementation": ("sft", "rm", "dpo", "rl"),
    "--use_liger_kernel": ("sft", "dpo", "rl"),
    "--grad_accum_dtype": ("sft", "rm", "dpo", "rl"),
    "--overlap_comm": ("sft", "rm", "dpo", "rl"),
    "--gradient_checkpointing_use_reentrant": ("sft", "rm", "dpo", "rl"),
    "--disable_fast_tokenizer": ("sft", "rm", "dpo", "rl"),
    "--dataloader_num_workers": ("sft", "rm", "dpo", "rl"),
    "--ds_tensor_parallel_size": ("sft", "rm", "dpo", "rl"),
    "--max_epochs": ("sft", "rm", "dpo", "rl"),
    "--aux_loss_coef": ("sft", "rm", "dpo", "rl"),
    "--pretrain": ("sft", "rm", "dpo", "rl"),
    "--learning_rate": ("sft", "rm", "dpo"),
    "--lr_warmup_ratio": ("sft", "rm", "dpo", "rl"),
    "--pretrain_mode": ("sft",),
    "--lr_scheduler": ("sft", "rm", "dpo", "rl"),
    "--l2": ("sft", "rm", "dpo", "rl"),
    "--adam_betas": ("sft", "rm", "dpo", "rl"),
    "--ring_attn_size": ("sft", "rm", "dpo", "rl"),
    "--ring_head_stride": ("sft", "rm", "dpo", "rl"),
    "--load_in_4bit": ("sft", "rm", "dpo", "rl"),
    "--lora_rank": ("sft", "rm", "dpo", "rl"),
    "--lora_alpha": ("sft", "rm", "dpo", "rl"),
    "--target_modules": ("sft", "rm", "dpo", "rl"),
    "--lora_dropout": ("sft", "rm", "dpo", "rl"),
    "--packing_samples": ("sft", "rm", "dpo", "rl"),
    "--dataset": ("sft", "rm", "dpo"),
    "--dataset_probs": ("sft", "rm", "dpo"),
    "--eval_dataset": ("sft", "rm", "dpo", "rl"),
    "--dataset_split": ("sft", "rm", "dpo"),
    "--eval_split": ("sft", "rm", "dpo", "rl"),
    "--max_samples": ("sft", "rm", "dpo", "rl"),
    "--train_split": ("sft",),
    "--multiturn": ("sft",),
    "--input_key": ("sft", "rl"),
    "--output_key": ("sft",),
    "--input_template": ("sft", "rm", "dpo", "rl"),
    "--apply_chat_template": ("sft", "rm", "dpo", "rl"),
    "--tokenizer_chat_template": ("sft", "rm", "dpo"),
    "--max_len": ("sft", "rm", "dpo", "rl"),
    "--use_wandb": ("sft", "rm", "dpo", "rl"),
    "--wandb_org": ("sft", "rm", "dpo", "rl"),
    "--wandb_group": ("sft", "rm", "dpo", "rl"),
    "--wandb_project": ("sft", "rm", "dpo", "rl"),
    "--wandb_run_name": ("sft", "rm", "dpo", "rl"),
    "--use_tensorboard": ("sft", "rm", "dpo", "rl"),
    "--use_ms": ("sft", "rm", "dpo", "rl"),
    "--value_head_prefix": ("rm", "rl"),
    "--compute_fp32_loss": ("rm",),
    "--margin_loss": ("rm",),
    "--loss": ("rm",),
    "--prompt_key": ("rm", "dpo"),
    "--chosen_key": ("rm", "dpo"),
    "--rejected_key": ("rm", "dpo"),
    "--ref_offload": ("dpo",),
    "--min_lr_ratio": ("dpo",),
    "--beta": ("dpo",),
    "--ipo": ("dpo",),
    "--label_smoothing": ("dpo",),
    "--nll_loss_coef": ("dpo",),
    "--ref_pretrain": ("dpo",),
    "--ref_num_nodes": ("rl",),
    "--ref_num_gpus_per_node": ("rl",),
    "--reward_num_nodes": ("rl",),
    "--reward_num_gpus_per_node": ("rl",),
    "--colocate_actor_ref": ("rl",),
    "--actor_num_nodes": ("rl",),
    "--actor_num_gpus_per_node": ("rl",),
    "--critic_num_nodes": ("rl",),
    "--critic_num_gpus_per_node": ("rl",),
    "--colocate_critic_reward": ("rl",),
    "--colocate_all_models": ("rl",),
    "--vllm_num_engines": ("rl",),
    "--vllm_tensor_parallel_size": ("rl",),
    "--vllm_sync_backend": ("rl",),
    "--vllm_sync_with_ray": ("rl",),
    "--enable_prefix_caching": ("rl",),
    "--enforce_eager": ("rl",),
    "--vllm_enable_sleep": ("rl",),
    "--vllm_gpu_memory_utilization": ("rl",),
    "--enable_vllm_is_correction": ("rl",),
    "--vllm_is_truncated_threshold": ("rl",),
    "--vllm_is_correction_type": ("rl",),
    "--async_train": ("rl",),
    "--async_queue_size": ("rl",),
    "--partial_rollout": ("rl",),
    "--best_metric_key": ("rl",),
    "--enable_ema": ("rl",),
    "--ema_beta": ("rl",),
    "--actor_init_on_gpu": ("rl",),
    "--deepspeed_enable_sleep": ("rl",),
    "--use_dynamic_batch": ("rl",),
    "--rollout_max_tokens_per_gpu": ("rl",),
    "--train_max_tokens_per_gpu": ("rl",),
    "--num_episodes": ("rl",),
    "--rollout_batch_size": ("rl",),
    "--vllm_generate_batch_size": ("rl",),
    "--micro_rollout_batch_size": ("rl",),
    "--max_new_tokens": ("rl",),
    "--ptx_coef": ("rl",),
    "--eps_clip": ("rl",),
    "--eps_clip_low_high": ("rl",),
    "--dual_clip": ("rl",),
    "--value_clip": ("rl",),
    "--lambd": ("rl",),
    "--gamma": ("rl",),
    "--normalize_reward": ("rl",),
    "--top_p": ("rl",),
    "--temperature": ("rl",),
    "--freezing_actor_steps": ("rl",),
    "--n_samples_per_prompt": ("rl",),
    "--save_value_network": ("rl",),
    "--actor_learning_rate": ("rl",),
    "--critic_learning_rate": ("rl",),
    "--kl_target": ("rl",),
    "--kl_horizon": ("rl",),
    "--init_kl_coef": ("rl",),
    "--policy_loss_type": ("rl",),
    "--kl_estimator": ("rl",),
    "--entropy_loss_coef": ("rl",),
    "--reward_clip_range": ("rl",),
    "--advantage_estimator": ("rl",),
    "--use_kl_loss": ("rl",),
    "--no_advantage_std_norm": ("rl",),
    "--overlong_buffer_len": ("rl",),
    "--overlong_penalty_factor": ("rl",),
    "--stop_properly_penalty_coef": ("rl",),
    "--reward_pretrain": ("rl",),
    "--remote_rm_url": ("rl",),
    "--critic_pretrain": ("rl",),
    "--ref_reward_offload": ("rl",),
    "--agent_func_path": ("rl",),
    "--prompt_data": ("rl",),
    "--prompt_data_probs": ("rl",),
    "--prompt_split": ("rl",),
    "--eval_temperature": ("rl",),
    "--eval_n_samples_per_prompt": ("rl",),
    "--label_key": ("rl",),
    "--dynamic_filtering": ("rl",),
    "--dynamic_filtering_reward_range": ("rl",),
    "--image_key": ("rl",),
    "--max_images_per_prompt": ("rl",),
    "--freeze_visual_encoder": ("rl",),
    "--perf": ("rl",),
}

# The RePULSe fork's own train_ppo flags (spec repulse.md §7).
FORK_FLAGS_SPEC: tuple[str, ...] = (
    "--save_actor",
    "--save_steps_harmless",
    "--fit_steps",
    "--rm_max_len",
    "--bc_coef",
    "--bc_steps",
    "--top_k",
    "--duplicate_rollout_batch_by",
    "--base_actor_learning_rate",
    "--alpha",
    "--rew_trans_alpha",
    "--rew_trans_beta",
    "--custom_single_prompt",
    "--new_custom_single_prompt",
    "--heldout_prompt_data",
    "--heldout_prompt_split",
    "--heldout_input_key",
    "--heldout_input_template",
    "--rm_type",
    "--threshold",
    "--reward_cap",
    "--save_negdata",
    "--save_negdata_threshold",
    "--target_dist_beta",
    "--anneal_target_dist_beta",
    "--start_target_dist_beta",
    "--start_alpha",
    "--separate_reweighting_beta",
    "--uniform_reweight",
    "--load_posterior_samples",
    "--load_posterior_samples_name",
    "--save_info_path",
    "--n_samples_for_f_q",
    "--n_seeds_f_q",
    "--update_steps_per_episode",
    "--exp_num_twist_updates",
    "--no_test_info",
    "--test_info_every",
    "--parameterization",
    "--shared_actorcritic",
    "--model_eval",
    "--no_critic",
    "--clamp_reward",
    "--additional_sd_divider",
    "--init_head_from_base",
    "--gradient_accumulation_steps",
    "--lr_scheduler",
    "--actor_loss_type",
    "--critic_loss_type",
    "--reward_transform",
    "--do_harmlessness_training",
    "--harmlessness_training_num_episodes",
    "--harmlessness_training_episodes_per_loop",
    "--sampling_target_updated_base",
    "--use_base_as_proposal",
    "--only_evaluate_on_neg_data",
    "--neg_data_load_path",
    "--evaluate_heldout_sampling",
    "--evaluate_on_neg_data",
    "--analytic_bad_word_calc",
    "--sampling_iters",
    "--harmlessness_training_loss_type",
    "--reinforce_baseline_type",
    "--neg_baseline_type",
    "--reinforce_hardcoded_baseline",
    "--neg_hardcoded_baseline",
)
