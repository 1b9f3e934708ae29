exports.up = async (knex) => {
  await knex.schema.createTable('users', (t) => {
    t.uuid('id').notNullable().defaultTo(knex.raw('gen_random_uuid()')).primary();
    t.string('email', 255).notNullable();
    t.string('password_hash', 255).notNullable();
    t.string('first_name', 100).notNullable();
    t.string('last_name', 100).notNullable();
    t.string('role', 50).notNullable();
    t.jsonb('permissions');
    t.uuid('organization_id').notNullable();
    t.timestamp('created_at', { useTz: true }).notNullable().defaultTo(knex.raw('now()'));
    t.timestamp('updated_at', { useTz: true }).notNullable().defaultTo(knex.raw('now()'));
    t.timestamp('last_login_at', { useTz: true });
    t.unique(['email'], { indexName: 'users_email_key' });
    t.foreign('organization_id', 'users_organization_id_fkey').references('id').inTable('organizations')
      .onDelete('RESTRICT');
    t.check("role IN ('admin', 'analyst', 'viewer')", [], 'users_role_check');
    t.index(['organization_id'], 'users_organization_id_idx');
  });
  // bcrypt with cost 10
  await knex.raw(`ALTER TABLE users ADD CONSTRAINT users_password_hash_bcrypt_10_check
                  CHECK (password_hash ~ '^\\$2[aby]\\$10\\$[./A-Za-z0-9]{53}$')`);
  await knex.raw(`CREATE TRIGGER users_set_updated_at BEFORE UPDATE ON users
                  FOR EACH ROW EXECUTE FUNCTION set_updated_at()`);
};

exports.down = (knex) => knex.schema.dropTable('users');
