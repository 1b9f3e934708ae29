-- 005_create_behavior_patterns: detected patterns (depends on customers, organizations).
SET LOCAL lock_timeout = '5s';

CREATE TABLE behavior_patterns (
    id              uuid          NOT NULL DEFAULT gen_random_uuid(),
    customer_id     uuid          NOT NULL,
    organization_id uuid          NOT NULL,
    pattern_type    varchar(100)  NOT NULL,
    confidence      numeric(5, 4) NOT NULL,
    frequency       integer       NOT NULL,
    description     text,
    metadata        jsonb,
    detected_at     timestamptz   NOT NULL,
    valid_until     timestamptz,
    created_at      timestamptz   NOT NULL DEFAULT now(),
    CONSTRAINT behavior_patterns_pkey PRIMARY KEY (id),
    CONSTRAINT behavior_patterns_customer_id_fkey FOREIGN KEY (customer_id)
        REFERENCES customers (id) ON DELETE CASCADE,
    CONSTRAINT behavior_patterns_organization_id_fkey FOREIGN KEY (organization_id)
        REFERENCES organizations (id) ON DELETE RESTRICT,
    CONSTRAINT behavior_patterns_confidence_range_check
        CHECK (confidence >= 0 AND confidence <= 1),
    CONSTRAINT behavior_patterns_frequency_positive_check
        CHECK (frequency > 0),
    CONSTRAINT behavior_patterns_valid_until_after_detected_at_check
        CHECK (valid_until > detected_at)
);

CREATE INDEX behavior_patterns_customer_id_idx ON behavior_patterns (customer_id);
CREATE INDEX behavior_patterns_organization_id_idx ON behavior_patterns (organization_id);
CREATE INDEX behavior_patterns_pattern_type_idx ON behavior_patterns (pattern_type);
CREATE INDEX behavior_patterns_detected_at_idx ON behavior_patterns (detected_at DESC);
